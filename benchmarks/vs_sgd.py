"""jaxflow vs plain fixed-step gradient descent (`optax.sgd`): the CPU cost floor.

The floor is the simplest possible loop: `lax.fori_loop` over `optax.sgd` updates,
vmapped over all starts, no status checks, no checkpoints. It reaches flow time
`t1 = steps * lr` only approximately (explicit Euler, and lr = 0.01 is near the
stability limit in the stiff escaping valleys). jaxflow integrates the flow to the same
`t1` with error control and per-trajectory statuses; `jaxflow.descend` runs the same
sgd iterations through jaxflow's engine (statuses, checkpoints, lane refill).

    python benchmarks/vs_sgd.py
    python benchmarks/vs_sgd.py --smoke
"""

from __future__ import annotations

import argparse


def bench(name, params, n, t1, lr, dtype, seed):
    import diffrax
    import jax
    import numpy as np
    import optax

    import jaxflow as jf
    from jaxflow import problems

    from _common import floor_gd, timed

    problem = problems.get(name, **params)
    x0 = problem.sample(jax.random.key(seed), n, dtype)
    steps = int(round(t1 / lr))
    run = floor_gd(problem, x0, lr, steps)
    gd_s, xg = timed(run, x0)
    sgd = optax.sgd(lr)  # one object: a new transformation per call would recompile
    desc_s, rd = timed(lambda: jf.descend(problem, x0, sgd, num_steps=steps, time_per_step=lr))
    ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
    flow_s, rf = timed(lambda: jf.flow(problem, x0, t1=t1, stepsize_controller=ctrl))
    fg = np.asarray(jax.vmap(problem.f_flat)(xg))
    return {
        "problem": name, "n": n, "t1": t1, "lr": lr, "gd_steps": steps,
        "floor_gd_s": gd_s, "descend_s": desc_s, "flow_s": flow_s,
        "flow_over_floor": flow_s / gd_s, "descend_over_floor": desc_s / gd_s,
        "floor_traj_steps_per_s": n * steps / gd_s,
        "flow_median_steps": float(np.median(np.asarray(rf.steps))),
        "gd_final_f_median": float(np.median(fg)), "flow_final_f_median": float(np.median(np.asarray(rf.f))),
        "gd_high_f_fraction": float(np.mean(fg > 0.5)),
        "flow_high_f_fraction": float(np.mean(np.asarray(rf.f) > 0.5)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    import jax.numpy as jnp

    # (problem, params, t1, lr, n): deep-linear (d = 24, a Hessian per implicit step)
    # costs ~100x more per trajectory than Example 1.1, so it runs 10x fewer starts.
    cases = [
        ("matrix-completion", {}, 200.0, 0.01, args.n),
        ("deep-linear", {"init_scale": 0.5}, 20.0, 1e-3, args.n // 10),
    ]
    if args.smoke:
        cases = [(c[0], c[1], c[2] / 10, c[3], 500) for c in cases]
    from _common import markdown_table, write_results

    rows = [bench(name, params, n, t1, lr, jnp.float32, args.seed) for name, params, t1, lr, n in cases]
    cols = ["problem", "n", "t1", "lr", "floor_gd_s", "descend_s", "flow_s", "flow_over_floor",
            "descend_over_floor", "gd_high_f_fraction", "flow_high_f_fraction"]
    write_results("vs_sgd", {"args": vars(args), "rows": rows},
                  "float32; floor = vmapped optax.sgd in a bare fori_loop\n\n" + markdown_table(rows, cols),
                  smoke=args.smoke)


if __name__ == "__main__":
    main()
