"""Throughput on one accelerator: trajectory-steps per second at N = 1e4, 1e5, 1e6.

Example 1.1 (smooth, stiff escapes) and ||XY^T - M||_1 (nonsmooth, min-norm
subgradient), float32, against naive `vmap(diffeqsolve)` (Tsit5, PID) on the same
card. A trajectory-step is one attempted step of one trajectory (accepted or rejected),
so the numbers compare engines, not solvers; wall times are reported too. Compile time
is excluded (one warm-up call per shape). A global deadline keeps the whole script
under `--budget` seconds: cases that would start after it are reported as skipped.

    python benchmarks/gpu.py               # on a GPU machine (about 3-4 minutes)
    python benchmarks/gpu.py --smoke       # seconds, on CPU
"""

from __future__ import annotations

import argparse
import time


def jaxflow_case(problem, n, t1, lanes):
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxflow as jf

    x0 = problem.sample(jax.random.key(0), n, jnp.float32)
    ctrl = diffrax.PIDController(rtol=1e-4, atol=1e-6)
    run = lambda: jf.flow(problem, x0, t1=t1, stepsize_controller=ctrl, lanes=lanes)  # noqa: E731
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
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.budget = "300,1000", 120.0

    import jax

    from jaxflow import problems

    from _common import markdown_table, write_results

    start = time.perf_counter()
    cases = [
        ("matrix-completion", problems.get("matrix-completion"), 200.0),
        ("nonsmooth-factorization 10x10 r=2", problems.get(
            "nonsmooth-factorization", m=10, n=10, r=2, rank_m=2), 10.0),
    ]
    rows = []
    for label, problem, t1 in cases:
        for n in [int(s) for s in args.sizes.split(",")]:
            for kind in ("jaxflow", "naive"):
                if time.perf_counter() - start > args.budget:
                    rows.append({"problem": label, "engine": kind, "n": n, "note": "skipped (time budget)"})
                    continue
                if kind == "naive" and "nonsmooth" in label:
                    # diffrax cannot follow a min-norm subgradient; naive means jax.grad here.
                    pass
                try:
                    r = jaxflow_case(problem, n, t1, args.lanes) if kind == "jaxflow" else naive_case(problem, n, t1)
                except Exception as e:  # noqa: BLE001 - record and go on (e.g. out of memory)
                    r = {"engine": kind, "n": n, "note": f"failed: {type(e).__name__}: {e}"[:200]}
                r["problem"] = label
                rows.append(r)
                print(r, flush=True)
    cols = ["problem", "engine", "n", "t1", "wall_s", "traj_steps_per_s", "lockstep_efficiency", "first_call_s", "note"]
    dev = jax.devices()[0]
    title = (f"float32, PID rtol 1e-4 atol 1e-6, device {getattr(dev, 'device_kind', dev)}; "
             "naive on the nonsmooth loss uses jax.grad (no min-norm selection)")
    write_results("gpu", {"args": vars(args), "rows": rows}, title + "\n\n" + markdown_table(rows, cols),
                  smoke=args.smoke)


if __name__ == "__main__":
    main()
