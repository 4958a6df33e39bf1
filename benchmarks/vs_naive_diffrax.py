"""jaxflow vs naive `jax.vmap(diffrax.diffeqsolve)` on Example 1.1.

Same problem, starts (uniform [-1, 1]^4, seeded), horizon, solver family and
tolerances. The naive baseline is what a user would write in 30 lines: one
`diffeqsolve` per start under `vmap`, PID controller, `throw=False`. Its adaptive loop
runs in lockstep until the slowest (stiff, escaping) trajectory ends, so it is run in a
subprocess with a wall-clock budget; when it does not finish, the ratio is reported as
a lower bound. Compile time is measured separately and excluded from the ratios.

    python benchmarks/vs_naive_diffrax.py                 # N = 1e4, t1 = 2e4 (goal >= 100x)
    python benchmarks/vs_naive_diffrax.py --smoke         # seconds, for CI-style checks
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

SOLVERS = ("Kvaerno5", "Tsit5")


def _problem_and_starts(n, seed):
    import jax
    import jax.numpy as jnp

    from jaxflow import problems

    problem = problems.get("matrix-completion")
    return problem, problem.sample(jax.random.key(seed), n, jnp.float32)


def naive_run(n, seed, t1, solver_name, rtol, atol, max_steps, queue):
    """Child process: naive vmapped diffeqsolve; reports compile and run times."""
    import diffrax
    import jax
    import numpy as np

    problem, x0 = _problem_and_starts(n, seed)
    grad = jax.grad(problem.f_flat)
    term = diffrax.ODETerm(lambda t, y, args: -grad(y))
    solver = getattr(diffrax, solver_name)()

    def one(y0):
        sol = diffrax.diffeqsolve(
            term, solver, 0.0, t1, None, y0,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False,
        )
        return sol.ys[-1], sol.result._value, sol.stats["num_steps"]

    t0 = time.perf_counter()
    compiled = jax.jit(jax.vmap(one)).lower(x0).compile()
    compile_s = time.perf_counter() - t0
    queue.put({"stage": "compiled", "compile_s": compile_s})
    t0 = time.perf_counter()
    y, result, steps = jax.block_until_ready(compiled(x0))
    run_s = time.perf_counter() - t0
    f = np.asarray(jax.vmap(problem.f_flat)(y))
    ok = np.asarray(result) == 0
    queue.put({
        "stage": "done", "compile_s": compile_s, "run_s": run_s,
        "escaping_fraction": float(np.mean(f[ok] > 0.5)) if ok.any() else float("nan"),
        "failed": int((~ok).sum()), "max_steps_taken": int(np.max(steps)),
        "median_steps": float(np.median(steps)),
    })


def run_naive(n, seed, t1, solver_name, rtol, atol, max_steps, budget_s):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=naive_run, args=(n, seed, t1, solver_name, rtol, atol, max_steps, queue)
    )
    t0 = time.perf_counter()
    proc.start()
    out = {"solver": solver_name, "finished": False}
    t_compiled = None
    while True:
        left = budget_s - (time.perf_counter() - t0)
        try:
            msg = queue.get(timeout=max(left, 0.1))
        except Exception:  # noqa: BLE001 - queue.Empty: budget exhausted
            break
        out.update(msg)
        if msg["stage"] == "compiled":
            t_compiled = time.perf_counter()
        if msg["stage"] == "done":
            out["finished"] = True
            break
        if time.perf_counter() - t0 > budget_s:
            break
    if proc.is_alive():
        proc.kill()
    proc.join()
    out["wall_s"] = time.perf_counter() - t0
    if not out["finished"]:
        # The run part got at least this long (budget minus compile); None when even the
        # compilation did not finish.
        out["run_s_lower_bound"] = (
            time.perf_counter() - t_compiled if t_compiled is not None else None
        )
    return out


def run_jaxflow(n, seed, t1, solver_name, rtol, atol):
    import diffrax
    import numpy as np

    import jaxflow as jf

    from _common import timed

    problem, x0 = _problem_and_starts(n, seed)
    solver = getattr(diffrax, solver_name)()
    ctrl = diffrax.PIDController(rtol=rtol, atol=atol)
    t0 = time.perf_counter()
    res = jf.flow(problem, x0, t1=t1, solver=solver, stepsize_controller=ctrl)
    res.f.block_until_ready()
    first_s = time.perf_counter() - t0
    run_s, res = timed(
        lambda: jf.flow(problem, x0, t1=t1, solver=solver, stepsize_controller=ctrl), repeat=3
    )
    f = np.asarray(res.f)
    return {
        "solver": solver_name, "run_s": run_s, "first_call_s": first_s,
        "escaping_fraction": float(np.mean(f > 0.5)),
        "lockstep_efficiency": res.lockstep_efficiency,
        "median_steps": float(np.median(np.asarray(res.steps))),
        "max_steps_taken": int(np.max(np.asarray(res.steps))),
        "counts": res.counts(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--t1", type=float, default=2e4)
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds per naive solver")
    ap.add_argument("--max-steps", type=int, default=2**20)
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (N=200, t1=200, budget 120 s)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.t1, args.budget = 200, 200.0, 120.0

    from _common import markdown_table, write_results

    rows, raw = [], {"args": vars(args), "naive": [], "jaxflow": []}
    jf_default = run_jaxflow(args.n, args.seed, args.t1, "Kvaerno5", args.rtol, args.atol)
    raw["jaxflow"].append(jf_default)
    for name in args.solvers.split(","):
        jf_same = jf_default if name == "Kvaerno5" else run_jaxflow(
            args.n, args.seed, args.t1, name, args.rtol, args.atol
        )
        if name != "Kvaerno5":
            raw["jaxflow"].append(jf_same)
        nv = run_naive(args.n, args.seed, args.t1, name, args.rtol, args.atol, args.max_steps, args.budget)
        raw["naive"].append(nv)
        if nv["finished"]:
            ratio = nv["run_s"] / jf_default["run_s"]
            naive_t = f"{nv['run_s']:.1f} s (compile {nv['compile_s']:.1f} s)"
            ratio_s = f"{ratio:.0f}x"
            esc = f"{100 * nv['escaping_fraction']:.2f} %"
        elif nv["run_s_lower_bound"] is not None:
            lb = nv["run_s_lower_bound"] / jf_default["run_s"]
            naive_t = (
                f"> {nv['run_s_lower_bound']:.0f} s (compile {nv['compile_s']:.0f} s; "
                "did not finish in the budget)"
            )
            ratio_s = f"> {lb:.0f}x"
            esc = "n/a"
        else:
            naive_t = f"compilation did not finish in {args.budget:.0f} s"
            ratio_s = "n/a"
            esc = "n/a"
        rows.append({
            "naive solver": f"vmap(diffeqsolve) {name}",
            "naive run": naive_t,
            "naive escaping": esc,
            "jaxflow, same solver": f"{jf_same['run_s']:.2f} s ({name})",
            "jaxflow (default) run": f"{jf_default['run_s']:.2f} s",
            "jaxflow escaping": f"{100 * jf_default['escaping_fraction']:.2f} %",
            "speed-up vs jaxflow default": ratio_s,
        })
    title = (
        f"Example 1.1, N = {args.n}, t1 = {args.t1:g}, float32, PID rtol {args.rtol:g} "
        f"atol {args.atol:g}; jaxflow lockstep efficiency {jf_default['lockstep_efficiency']:.0%}"
    )
    write_results(
        "vs_naive_diffrax", raw, title + "\n\n" + markdown_table(rows, list(rows[0])), smoke=args.smoke
    )


if __name__ == "__main__":
    main()
