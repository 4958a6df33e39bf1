"""Throughput on one accelerator: trajectory-steps per second at N = 1e4, 1e5, 1e6.

Example 1.1 (smooth, stiff escapes; the default solver) and ||XY^T - M||_1 (nonsmooth,
min-norm subgradient; `ProxLinear(estimate="midpoint")`, which gives the default's statuses
in ~8x fewer steps: 84 against 710 per trajectory to t1 = 10 on a CPU, where the default
made the case alone take minutes), float32, against naive `vmap(diffeqsolve)` (Tsit5, PID)
on the same card. A trajectory-step is one attempted step of one trajectory (accepted or rejected),
so the numbers compare engines, not solvers; wall times are reported too. Compile time
is excluded (one warm-up call per shape, to the same horizon: the engine's checkpoint
schedule, and so its program, depends on t1). A global deadline keeps the whole script
under `--budget` seconds: cases that would start after it are reported as skipped.

Then the model sizes of `high_dim.py` on the card: rank-5 completion of a 100 x 100
matrix (d = 10^3, N = 256, observation rates 0.35 and 0.1, each with a float64
reference on 8 starts, run after every timed case under `--reference-budget`) and of a 1000 x 1000 matrix (d = 10^4, N = 32, rate 0.01),
float32 to t1 = 2e3 with the default solver (matrix-free `RodasKrylov`), wall times
including compilation.

    python benchmarks/gpu.py               # on a GPU machine (about 6-8 minutes)
    python benchmarks/gpu.py --problems smooth --high-dim "" --part smooth   # one part
    python benchmarks/gpu.py --smoke       # ~10 minutes on a 2-core CPU, most of it the float64 reference

A run that stops from outside leaves a trail on stderr: a timestamped line when each
case starts, JAX's log of every compilation with its duration (`--log-compiles`), and
every `--stacks-every` seconds the Python stack of each thread (so a case stuck inside a
compilation can be told from one stuck in a device call).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import sys
import time

_T0 = time.perf_counter()


def trail(message: str) -> None:
    """A timestamped progress line on stderr (seconds since the script started)."""
    print(f"[{time.perf_counter() - _T0:8.1f} s] {message}", file=sys.stderr, flush=True)


def jaxflow_case(problem, n, t1, lanes, solver="auto"):
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxflow as jf

    x0 = problem.sample(jax.random.key(0), n, jnp.float32)
    ctrl = diffrax.PIDController(rtol=1e-4, atol=1e-6)
    run = lambda: jf.flow(problem, x0, t1=t1, solver=solver, stepsize_controller=ctrl,  # noqa: E731
                          lanes=lanes)
    t0 = time.perf_counter()
    jax.block_until_ready(run().f)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run()
    jax.block_until_ready(res.f)
    wall = time.perf_counter() - t0
    traj_steps = float(np.sum(np.asarray(res.steps, np.int64) + np.asarray(res.rejected)))
    return {
        "engine": "jaxflow", "n": n, "t1": t1, "lanes": res.lanes, "wall_s": wall,
        "first_call_s": compile_s, "traj_steps": traj_steps, "traj_steps_per_s": traj_steps / wall,
        "lockstep_efficiency": res.lockstep_efficiency, "counts": res.counts(),
    }


def naive_case(problem, n, t1):
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    x0 = problem.sample(jax.random.key(0), n, jnp.float32)
    grad = jax.grad(problem.f_flat)
    term = diffrax.ODETerm(lambda t, y, args: -grad(y))

    def one(y0):
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), 0.0, t1, None, y0,
            stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6),
            saveat=diffrax.SaveAt(t1=True), max_steps=2**16, throw=False,
        )
        return sol.ys[-1], sol.stats["num_steps"]

    t0 = time.perf_counter()
    fn = jax.jit(jax.vmap(one)).lower(x0).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, steps = jax.block_until_ready(fn(x0))
    wall = time.perf_counter() - t0
    traj_steps = float(np.sum(np.asarray(steps, np.int64)))
    return {
        "engine": "naive vmap(diffeqsolve) Tsit5", "n": n, "t1": t1, "wall_s": wall,
        "first_call_s": compile_s, "traj_steps": traj_steps, "traj_steps_per_s": traj_steps / wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--budget", type=float, default=220.0, help="seconds for the whole script")
    ap.add_argument("--lanes", type=int, default=None, help="engine lanes (default: backend-based)")
    ap.add_argument("--high-dim", default="d1000,d1000-sparse,d10000-sparse",
                    help="model-size cases after the throughput ones ('' for none)")
    ap.add_argument("--high-dim-budget", type=float, default=240.0,
                    help="seconds for the model-size cases (checked before each)")
    ap.add_argument("--reference-budget", type=float, default=300.0,
                    help="seconds for the float64 references of the model-size cases, which "
                         "run after every timed case (checked before each)")
    ap.add_argument("--problems", default="smooth,nonsmooth",
                    help="throughput cases: smooth (Example 1.1), nonsmooth (||XY^T - M||_1)")
    ap.add_argument("--part", default="",
                    help="results go to gpu-PART-<machine>.json (runs split into parts)")
    ap.add_argument("--log-compiles", action=argparse.BooleanOptionalAction, default=True,
                    help="log every compilation and its duration to stderr (JAX's own log)")
    ap.add_argument("--stacks-every", type=float, default=60.0,
                    help="dump every thread's Python stack to stderr this often (0: never)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.stacks_every > 0:
        faulthandler.dump_traceback_later(args.stacks_every, repeat=True, file=sys.stderr)
    if args.log_compiles:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
        import jax

        jax.config.update("jax_log_compiles", True)
    if args.smoke:
        args.sizes, args.budget, args.high_dim_budget = "100,300", 45.0, 45.0
        args.reference_budget = 60.0  # the first reference only

    import jax

    import jaxflow as jf
    from jaxflow import problems

    from _common import markdown_table, write_results

    start = time.perf_counter()
    wanted = set(args.problems.split(",")) - {""}
    cases = [c for key, c in [
        ("smooth", ("matrix-completion", problems.get("matrix-completion"), 200.0, "auto")),
        ("nonsmooth", ("nonsmooth-factorization 10x10 r=2", problems.get(
            "nonsmooth-factorization", m=10, n=10, r=2, rank_m=2),
            1.0 if args.smoke else 10.0, jf.ProxLinear(estimate="midpoint"))),
    ] if key in wanted]
    dev = jax.devices()[0]
    title = (f"float32, PID rtol 1e-4 atol 1e-6, device {getattr(dev, 'device_kind', dev)}; "
             "jaxflow: the default solver on Example 1.1, ProxLinear(estimate=\"midpoint\") on "
             "the nonsmooth loss; naive: Tsit5, on the nonsmooth loss with jax.grad (no "
             "min-norm selection)")
    cols = ["problem", "engine", "n", "t1", "wall_s", "traj_steps_per_s", "lockstep_efficiency",
            "first_call_s", "note"]
    rows, high_rows, checks = [], [], {}

    def save():
        # After every case, so that a run stopped from outside keeps what it measured.
        table = title + "\n\n" + markdown_table(rows, cols)
        if high_rows:
            table += ("\n\nModel sizes (float32, t1 = 2e3, default solver, wall incl. "
                      "compilation):\n\n" + markdown_table(
                          [{**r, "refined": ", ".join(f"{k} {v}" for k, v in r.get("refined", {}).items())}
                           for r in high_rows],
                          ["case", "d", "n", "stepper", "wall_s", "refined", "steps_median",
                           "steps_median_escaping", "steps_max", "note"]))
        write_results("gpu" + (f"-{args.part}" if args.part else ""), {"args": vars(args), "rows": rows, "high_dim_rows": high_rows,
                              "high_dim_checks": checks}, table, smoke=args.smoke)

    # Sizes outermost: both problems are measured at the smaller sizes before the budget
    # can run out.
    for n in [int(s) for s in args.sizes.split(",")]:
        for label, problem, t1, solver in cases:
            for kind in ("jaxflow", "naive"):
                if time.perf_counter() - start > args.budget:
                    rows.append({"problem": label, "engine": kind, "n": n, "note": "skipped (time budget)"})
                    continue
                trail(f"{label}, {kind}, n = {n}")
                try:
                    r = jaxflow_case(problem, n, t1, args.lanes, solver) if kind == "jaxflow" else naive_case(problem, n, t1)
                except Exception as e:  # noqa: BLE001 - record and go on (e.g. out of memory)
                    r = {"engine": kind, "n": n, "note": f"failed: {type(e).__name__}: {e}"[:200]}
                r["problem"] = label
                rows.append(r)
                print(r, flush=True)
                save()
    high_dim_cases(args, high_rows, checks, save)
    save()
    faulthandler.cancel_dump_traceback_later()
    trail("done")


def high_dim_cases(args, rows, checks, save):
    """The d = 10^3 and 10^4 completion cases of `high_dim.py`, on this device (appends
    to `rows` and `checks`, calls `save` after each)."""
    import jax

    from high_dim import completion_case, reference_check

    # (n, r, starts, observation rate): at rate 0.35 the d = 10^3 instance has no
    # escapes; at about 10 observed entries per row (rates 0.1 and 0.01) most starts
    # escape to infinity, the stiff case.
    sizes = {"d1000": (100, 5, 256, 0.35), "d1000-sparse": (100, 5, 256, 0.1),
             "d10000-sparse": (1000, 5, 32, 0.01)}
    if args.smoke:  # d = 400, 500: still matrix-free
        sizes = {"d1000": (40, 5, 4, 0.35), "d1000-sparse": (40, 5, 4, 0.5),
                 "d10000-sparse": (50, 5, 2, 0.25)}
    jax.config.update("jax_enable_x64", True)  # the reference; the benchmarked runs are float32
    start = time.perf_counter()
    pending = []  # float64 references, run after every timed case
    for case in [c for c in args.high_dim.split(",") if c]:
        n, r, n_starts, rate = sizes[case]
        if time.perf_counter() - start > args.high_dim_budget:
            rows.append({"case": case, "n": n_starts, "note": "skipped (time budget)"})
            continue
        trail(f"model size {case}: n = {n}, r = {r}, {n_starts} starts, rate {rate}")
        try:
            p, x0, r_rows, results = completion_case(
                n, r, n_starts, 2e3, [("auto", "auto")], rate=rate)
            rows += r_rows
            if case.startswith("d1000-") or case == "d1000":
                pending.append((case, p, x0, *results["auto"], min(8, n_starts)))
        except Exception as e:  # noqa: BLE001 - record and go on (e.g. out of memory)
            rows.append({"case": case, "n": n_starts, "note": f"failed: {type(e).__name__}: {e}"[:200]})
            print(rows[-1], flush=True)
        save()
    # The float64 references take minutes (500 s for 4 starts at d = 400 on a 2-core
    # CPU), so they come after every timed case, under their own budget (checked before
    # each): a run stopped during one keeps every timed case.
    start = time.perf_counter()
    for case, p, x0, res, refined, n_ref in pending:
        key = f"{case}_vs_float64_reference"
        if time.perf_counter() - start > args.reference_budget:
            checks[key] = {"skipped": "time budget (--reference-budget)"}
            save()
            continue
        trail(f"float64 reference for {case}: {n_ref} starts")
        try:
            checks[key] = reference_check(p, x0, res, refined, n_ref, 2e3)
        except Exception as e:  # noqa: BLE001 - record and go on
            checks[key] = {"failed": f"{type(e).__name__}: {e}"[:200]}
        print(checks, flush=True)
        save()

if __name__ == "__main__":
    main()
