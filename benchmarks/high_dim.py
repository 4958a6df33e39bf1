"""Real model sizes: rank-r completion of an n x n matrix and an MLP, d = 10^2 .. 10^4.

Compares jaxflow's default (`solver="auto"`: dense Kvaerno5, with Hessians kept over
steps, below `MATRIX_FREE_MIN_DIM`, the matrix-free `RodasKrylov` above) with Tsit5 and
the dense-Hessian Kvaerno5 / Rodas4 on the same starts (float32, uniform in [-1, 1]^d). Wall times include compilation (as a
new user sees them); statuses are the engine's, refined by `jaxflow.classify`. The
d ~ 10^3 case is checked against a float64 reference (RodasKrylov with independent
GMRES(64) stage solves, rtol 1e-8) on a subset of starts (`--nref`). The `relu` case
(a ReLU MLP, d = 97, 1600 kinks) compares the prox-linear QP over few kink slots for
lanes with few candidate kinks (`ProxLinear(few_kinks=16)`, the default) with the QP
over all 256 slots.

    python benchmarks/high_dim.py                 # all cases
    python benchmarks/high_dim.py --cases d120     # one case
    python benchmarks/high_dim.py --cases d240,d480  # the dense / matrix-free crossover
    python benchmarks/high_dim.py --cases relu     # ReLU network, few-kink QP on and off
    python benchmarks/high_dim.py --cases d1000dense  # d = 1000: default vs dense, 16 starts
    python benchmarks/high_dim.py --smoke
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _independent_gmres():
    import jaxflow as jf

    # RodasKrylov before its stages shared a Krylov space: GMRES(32) per stage.
    return jf.RodasKrylov(recycle=False, krylov_dim=32, krylov_rtol=0.1)


def run_one(problem, x0, solver, t1, max_steps, label, repeat=False, **flow_kw):
    import jax

    import jaxflow as jf

    t0 = time.perf_counter()
    res = jf.flow(problem, x0, t1=t1, solver=solver, max_steps=max_steps, **flow_kw)
    jax.block_until_ready(res.x)
    wall = time.perf_counter() - t0
    run_s = None
    if repeat:  # the same call again: compiled, so its wall time is the run alone
        t0 = time.perf_counter()
        jax.block_until_ready(jf.flow(problem, x0, t1=t1, solver=solver,
                                      max_steps=max_steps, **flow_kw).x)
        run_s = round(time.perf_counter() - t0, 2)
    refined = jf.classify(res)
    steps = np.asarray(res.steps)
    escaping = np.asarray(refined.status) == int(jf.Status.ESCAPING)
    row = dict(
        case=problem.description, d=problem.dim, n=int(x0.shape[0]), solver=label,
        stepper=res.meta["solver"], wall_s=round(wall, 2), run_s=run_s, lanes=res.lanes,
        statuses=res.counts(), refined=refined.counts(),
        steps_median=float(np.median(steps)), steps_max=int(steps.max()),
        steps_median_escaping=float(np.median(steps[escaping])) if escaping.any() else None,
        rejected_total=int(np.sum(np.asarray(res.rejected))),
        peak_rss_gib=round(_peak_rss_gib(), 2),
    )
    print(row, flush=True)
    return row, res, refined


def _kink_ties(problem, res):
    """How many kinks are tied at the checkpointed states of the flows (every start's
    states at its checkpoints), and the exactness of the minimal-norm subgradient there
    (`jaxflow.minnorm_subgradient`): generic points should be SMOOTH or certified, never
    TRUNCATED."""
    import jax.numpy as jnp

    import jaxflow as jf

    cp = np.asarray(res.cp_x)
    pts = cp.reshape(-1, cp.shape[-1])
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    mn = jf.minnorm_subgradient(problem, jnp.asarray(pts))
    tied = np.asarray(mn.n_active)
    ex = np.asarray(mn.exactness)
    return dict(
        ties_points=int(pts.shape[0]), ties_share_with_tied=float(np.mean(tied > 0)),
        ties_median=float(np.median(tied)), ties_max=int(tied.max()),
        exactness={jf.Exactness(int(k)).name: int(np.sum(ex == k)) for k in np.unique(ex)},
    )


def completion_case(n, r, n_starts, t1, solvers, seed=0, max_steps=65536, rate=0.35):
    import jax
    import jax.numpy as jnp

    from jaxflow import problems

    p = problems.get("matrix-completion-nxn", n=n, r=r, rate=rate, seed=seed)
    x0 = p.sample(jax.random.key(seed), n_starts, jnp.float32)
    rows, results = [], {}
    for label, solver in solvers:
        row, res, refined = run_one(p, x0, solver, t1, max_steps, label)
        rows.append(row)
        results[label] = (res, refined)
    return p, x0, rows, results


def reference_check(p, x0, res, refined, n_ref, t1):
    """Statuses of the first `n_ref` starts vs a float64 run at rtol 1e-8 (RodasKrylov
    with independent GMRES(64) stage solves, so the reference does not share the
    recycled solver it checks: dense Rodas4 at d = 1000 takes minutes per start)."""
    import diffrax
    import jax.numpy as jnp

    import jaxflow as jf

    if n_ref <= 0:
        return {"skipped": "--nref 0"}
    t0 = time.perf_counter()
    ref = jf.flow(p, x0[:n_ref].astype(jnp.float64), t1=t1,
                  solver=jf.RodasKrylov(recycle=False, krylov_dim=64, krylov_rtol=0.1),
                  stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10))
    ref_c = jf.classify(ref)
    a = np.asarray(refined.status)[:n_ref]
    b = np.asarray(ref_c.status)[:n_ref]
    return dict(n_ref=n_ref, agree=int(np.sum(a == b)), ref_statuses=ref_c.counts(),
                ref_wall_s=round(time.perf_counter() - t0, 1),
                f_max_abs_diff=float(np.max(np.abs(np.asarray(res.f)[:n_ref]
                                                   - np.asarray(ref.f)))))


def step_cost(sizes, lanes=4, repeat=2, dense=True):
    """Wall time of one vmapped step (compile excluded) per stepper and dimension."""
    import diffrax
    import jax
    import jax.numpy as jnp

    import jaxflow as jf
    from jaxflow import problems
    from jaxflow._field import GradientField
    from jaxflow._stepper import make_stepper

    rows = []
    for n, r in sizes:
        p = problems.get("matrix-completion-nxn", n=n, r=r, rate=0.35, seed=0)
        x0 = p.sample(jax.random.key(0), lanes, jnp.float32)
        field = GradientField(p.f_flat)
        row = dict(d=p.dim, lanes=lanes)
        steppers = [("RodasKrylov", jf.RodasKrylov()),
                    ("RodasKrylov_independent", _independent_gmres())]
        if dense:
            steppers += [("Rodas4", jf.Rodas4()),
                         ("Kvaerno5", make_stepper(diffrax.Kvaerno5(), rtol=1e-6, atol=1e-8))]
        for label, stepper in steppers:

            def one(x, h, stepper=stepper):
                f, v = field.value_and_velocity(x)
                return stepper.step(field, x, f, v, h, None)

            step = jax.jit(jax.vmap(one, in_axes=(0, None)))
            jax.block_until_ready(step(x0, jnp.float32(0.1)))
            t0 = time.perf_counter()
            for _ in range(repeat):
                out = step(x0, jnp.float32(0.1))
            jax.block_until_ready(out)
            row[f"{label}_ms"] = round((time.perf_counter() - t0) / repeat * 1e3, 1)
        row["independent_over_recycled"] = round(row["RodasKrylov_independent_ms"]
                                                 / row["RodasKrylov_ms"], 2)
        if dense:
            row["dense_over_krylov"] = round(min(row["Rodas4_ms"], row["Kvaerno5_ms"])
                                             / row["RodasKrylov_ms"], 2)
        print(row, flush=True)
        rows.append(row)
    return rows


def main():
    import diffrax
    import jax
    import jax.numpy as jnp

    import jaxflow as jf
    from jaxflow import problems

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="d120,d1000,d10000,mlp")
    ap.add_argument("--n120", type=int, default=64)
    ap.add_argument("--n1000", type=int, default=256)
    ap.add_argument("--n10000", type=int, default=32)
    ap.add_argument("--nmlp", type=int, default=256)
    ap.add_argument("--nrelu", type=int, default=64)
    ap.add_argument("--t1-relu", type=float, default=1.0)
    ap.add_argument("--relu-widths", default="4,16,1", help="ReLU MLP widths (d = 97 by default)")
    ap.add_argument("--relu-samples", type=int, default=100)
    ap.add_argument("--relu-estimates", default="euler",
                    help="ProxLinear error estimates to run, e.g. euler,midpoint")
    ap.add_argument("--relu-default-only", action="store_true",
                    help="only the default ProxLinear (not the QP over all slots)")
    ap.add_argument("--few-kinks", default="16",
                    help="ProxLinear(few_kinks=...) tiers of the relu case, e.g. 16,64")
    ap.add_argument("--ncross", type=int, default=32, help="starts at d = 240 and 480")
    ap.add_argument("--max-steps-10000", type=int, default=65536,
                    help="step budget at d = 10^4 (a few steps measure cost and memory)")
    ap.add_argument("--nref", type=int, default=8)
    ap.add_argument("--rate10000", type=float, default=0.35,
                    help="observation rate at d = 10^4 (0.012: about as many entries as d)")
    ap.add_argument("--rate1000", type=float, default=0.35,
                    help="observation rate at d = 1000 (0.1: escaping starts)")
    ap.add_argument("--independent-1000", action="store_true",
                    help="also run RodasKrylov with independent GMRES(32) stage solves")
    ap.add_argument("--step-lanes", type=int, default=4)
    ap.add_argument("--no-dense-step", action="store_true",
                    help="step_cost without the dense steppers")
    ap.add_argument("--t1", type=float, default=2e3)
    ap.add_argument("--dense-1000", action="store_true",
                    help="also run the dense solvers at d = 1000 on the first --ndense starts")
    ap.add_argument("--ndense", type=int, default=16)
    ap.add_argument("--note", default="wall times include compilation",
                    help="how the machine was used during the run (recorded in the JSON)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    # float64 for the reference runs; the benchmarked runs are float32 (their starts are).
    jax.config.update("jax_enable_x64", True)
    if args.smoke:
        args.n120, args.n1000, args.n10000, args.nmlp, args.t1 = 4, 4, 2, 4, 10.0
        args.ncross = 4
    cases = args.cases.split(",")
    rows, checks = [], {}

    fresh = jf.ESDIRKStepper(diffrax.Kvaerno5(), reuse_hessian=False)
    if "d120" in cases:
        solvers = [("auto", "auto"), ("Tsit5", diffrax.Tsit5()),
                   ("Kvaerno5 (dense, a Hessian per step)", fresh),
                   ("Rodas4 (dense)", jf.Rodas4()), ("RodasKrylov", jf.RodasKrylov())]
        _, _, r, _ = completion_case(30, 2, args.n120, args.t1, solvers)
        rows += r
    for case, (n, r_) in (("d240", (60, 2)), ("d480", (120, 2))):
        if case in cases:  # where dense Kvaerno5 with Hessian reuse and RodasKrylov cross
            solvers = [("auto", "auto"), ("Kvaerno5 (Hessian reuse)", diffrax.Kvaerno5()),
                       ("RodasKrylov", jf.RodasKrylov())]
            _, _, r, _ = completion_case(n, r_, args.ncross, args.t1, solvers)
            rows += r
    if "d1000" in cases:
        solvers = [("auto", "auto")]
        if args.independent_1000:
            solvers.append(("RodasKrylov independent GMRES(32)", _independent_gmres()))
        p, x0, r, results = completion_case(100, 5, args.n1000, args.t1, solvers,
                                            rate=args.rate1000)
        rows += r
        res, refined = results["auto"]
        checks["d1000_vs_float64_reference"] = reference_check(
            p, x0, res, refined, min(args.nref, args.n1000), args.t1)
        print(checks, flush=True)
    if "d1000" in cases and args.dense_1000 or "d1000dense" in cases:
        # The dense solvers on the first `--ndense` of the d = 1000 starts, side by side
        # with the default on the same starts (all 256 would take hours densely); each
        # run twice, the second time compiled (`run_s`).
        p = problems.get("matrix-completion-nxn", n=100, r=5, rate=args.rate1000, seed=0)
        sub = p.sample(jax.random.key(0), args.n1000, jnp.float32)[: args.ndense]
        for label, solver in (("auto (subset)", "auto"),
                              ("Kvaerno5 (dense, Hessian reuse)", diffrax.Kvaerno5()),
                              ("Rodas4 (dense)", jf.Rodas4())):
            row, _, _ = run_one(p, sub, solver, args.t1, 65536, label, repeat=True)
            rows.append(row)
        best_dense = min(r["run_s"] for r in rows[-2:])
        checks["d1000_dense_over_default_run"] = round(best_dense / rows[-3]["run_s"], 2)
        checks["d1000_dense_over_default_wall"] = round(
            min(r["wall_s"] for r in rows[-2:]) / rows[-3]["wall_s"], 2)
        print(checks, flush=True)
    if "d10000" in cases:
        _, _, r, _ = completion_case(1000, 5, args.n10000, args.t1, [("auto", "auto")],
                                     max_steps=args.max_steps_10000, rate=args.rate10000)
        rows += r
    if "step_cost" in cases:
        checks["step_cost"] = step_cost([(30, 2), (60, 2), (60, 4), (100, 5)],
                                        lanes=args.step_lanes, dense=not args.no_dense_step)
    if "mlp" in cases:
        p = problems.get("mlp", widths=[16, 48, 1], activation="tanh", n_samples=1000)
        x0 = p.sample(jax.random.key(0), args.nmlp, jnp.float32)
        row, _, _ = run_one(p, x0, "auto", 1e3, 65536, "auto")
        rows.append(row)

    if "relu" in cases:
        # ReLU MLP, d = 97 (1600 kinks): the prox-linear QP over few kink slots for lanes
        # with few candidate kinks (default) against the QP over all 256 slots.
        widths = [int(w) for w in args.relu_widths.split(",")]
        p = problems.get("mlp", widths=widths, activation="relu", n_samples=args.relu_samples)
        x0 = p.sample(jax.random.key(0), args.nrelu, jnp.float32)
        tiers = tuple(int(t) for t in args.few_kinks.split(","))
        tag = ",".join(str(t) for t in tiers)
        solvers = [
            (("ProxLinear()" if e == "euler" else f"ProxLinear(estimate={e!r})")
             + f" (few_kinks={tag})", jf.ProxLinear(estimate=e, few_kinks=tiers))
            for e in args.relu_estimates.split(",")
        ]
        if not args.relu_default_only:
            solvers.append(("ProxLinear(few_kinks=0)", jf.ProxLinear(few_kinks=0)))
        for label, solver in solvers:
            row, res, _ = run_one(p, x0, solver, args.t1_relu, 65536, label,
                                  save_states=args.nrelu)
            row.update(_kink_ties(p, res))
            print(row, flush=True)
            rows.append(row)

    from _common import markdown_table, write_results

    cols = ["case", "d", "n", "solver", "stepper", "wall_s", "run_s", "refined", "steps_median",
            "steps_max", "rejected_total", "peak_rss_gib"]
    if any("ties_points" in r for r in rows):  # the ReLU case's kink statistics
        cols += ["ties_points", "ties_share_with_tied", "ties_median", "ties_max", "exactness"]
    table = markdown_table(
        [{**r, "refined": ", ".join(f"{k} {v}" for k, v in r["refined"].items())}
         for r in rows], cols)
    if "d1000_dense_over_default_run" in checks:
        table += (f"\n\nBest dense solver over the default on the same {args.ndense} starts: "
                  f"{checks['d1000_dense_over_default_run']}x in run time (compiled), "
                  f"{checks['d1000_dense_over_default_wall']}x in wall time with compilation.")
    if "step_cost" in checks:
        cols_step = ["d", "lanes", "RodasKrylov_ms", "RodasKrylov_independent_ms",
                     "independent_over_recycled"]
        if not args.no_dense_step:
            cols_step += ["Rodas4_ms", "Kvaerno5_ms", "dense_over_krylov"]
        table += "\n\nOne step, compile excluded:\n\n" + markdown_table(
            checks["step_cost"], cols_step)
    name = "high_dim" if set(cases) >= {"d120", "d1000", "d10000", "mlp"} else (
        "high_dim-" + "-".join(cases))
    if "d1000" in cases and args.rate1000 != 0.35:
        name += f"-rate{args.rate1000:g}"
    if "d10000" in cases and args.rate10000 != 0.35:
        name += f"-rate{args.rate10000:g}"
    if "relu" in cases and args.relu_widths != "4,16,1":
        name += "-" + args.relu_widths.replace(",", "-") + f"-m{args.relu_samples}"
    if "relu" in cases and args.relu_widths != "4,16,1" and args.nrelu != 16:
        name += f"-n{args.nrelu}"  # the larger network's runs have 16 starts unless named
    if "relu" in cases and args.t1_relu != 1.0:
        name += f"-t{args.t1_relu:g}"
    if "relu" in cases and args.few_kinks != "16":
        name += "-tiers" + args.few_kinks.replace(",", "-")
    if "step_cost" in cases and args.step_lanes != 4:
        name += f"-lanes{args.step_lanes}"
    write_results(name, {
        "args": vars(args), "rows": rows, "checks": checks,
        "note": args.note,
        "pinned_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
    }, table, smoke=args.smoke)


if __name__ == "__main__":
    main()
