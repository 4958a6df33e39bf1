"""Command line: `jaxflow problems | flow | ...`.

Exit codes: 0 success, 2 bad usage or bad input (message on stderr), 1 unexpected error.
"""

from __future__ import annotations

import argparse
import sys
import time

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _common_flow_args(p: argparse.ArgumentParser, *, n_default: int, t1_default: float):
    p.add_argument("problem", help="built-in problem name (see `jaxflow problems`)")
    p.add_argument("--n", type=int, default=n_default, help="number of random starts")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for the starts")
    p.add_argument("--t1", type=float, default=t1_default, help="horizon of the flow")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--solver", default="auto", help="auto | Kvaerno5 | Kvaerno3 | Tsit5 | Dopri5 ...")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-8)
    p.add_argument("--gtol", type=float, default=None, help="stationarity tolerance")
    p.add_argument("--escape-radius", type=float, default=1e6)
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="problem parameter (repeatable), e.g. --param depth=3",
    )


def _parse_params(items: list[str]) -> dict:
    import json

    params = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return params


def _solver_from_name(name: str):
    import diffrax

    if name == "auto":
        return "auto"
    cls = getattr(diffrax, name, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffrax.AbstractSolver):
        raise ValueError(f"unknown diffrax solver {name!r} (try Kvaerno5, Tsit5, Dopri5).")
    return cls()


def _enable_dtype(dtype: str):
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)


def cmd_problems(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import problems

    table = Table(title="jaxflow built-in problems")
    table.add_column("name", style="bold")
    table.add_column("what it is")
    for name in problems.names():
        doc = problems.info(name).strip().split("\n\n")[0].replace("\n", " ")
        table.add_row(name, doc)
    Console().print(table)
    return EXIT_OK


def outcome_table(res, title: str):
    """A rich table of statuses with 95 % Wilson intervals and medians per status."""
    import numpy as np
    from rich.table import Table

    from ._stats import wilson_interval
    from ._status import Status

    st = np.asarray(res.status)
    f = np.asarray(res.f, np.float64)
    nrm = np.linalg.norm(np.asarray(res.x, np.float64), axis=-1)
    t = np.asarray(res.t, np.float64)
    n = st.size
    table = Table(title=title)
    for col in ("status", "count", "fraction", "95% interval", "median f", "median |x|", "median t"):
        table.add_column(col, justify="right" if col != "status" else "left")
    for s in Status:
        sel = st == int(s)
        k = int(sel.sum())
        if k == 0:
            continue
        lo, hi = wilson_interval(k, n)
        table.add_row(
            s.name, str(k), f"{k / n:.2%}", f"[{lo:.2%}, {hi:.2%}]",
            f"{np.median(f[sel]):.4g}", f"{np.median(nrm[sel]):.4g}", f"{np.median(t[sel]):.4g}",
        )
    return table


def cmd_flow(args) -> int:
    _enable_dtype(args.dtype)
    import diffrax
    import jax
    import jax.numpy as jnp
    from rich.console import Console

    from . import problems
    from ._flow import flow

    console = Console()
    problem = problems.get(args.problem, **_parse_params(args.param))
    if args.n <= 0:
        raise ValueError(f"--n must be positive, got {args.n}")
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    x0 = problem.sample(jax.random.key(args.seed), args.n, dtype)
    t0 = time.perf_counter()
    res = flow(
        problem, x0, t1=args.t1, solver=_solver_from_name(args.solver),
        stepsize_controller=diffrax.PIDController(rtol=args.rtol, atol=args.atol),
        gtol=args.gtol, escape_radius=args.escape_radius,
    )
    jax.block_until_ready(res.f)
    wall = time.perf_counter() - t0
    title = (
        f"{problem.name}: {args.n} starts ~ {problem.sampler!r}, flow to t = {args.t1:g} "
        f"({res.meta['solver']}, {args.dtype})"
    )
    console.print(outcome_table(res, title))
    console.print(
        f"{wall:.2f} s including compilation; lockstep efficiency "
        f"{res.lockstep_efficiency:.0%} ({res.lanes} lanes)."
    )
    console.print(
        "HORIZON = reached t1 without converging or escaping; run `jaxflow scan` for the "
        "classification of these (escaping to infinity / bounded) and the Theorem 1.2 report."
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxflow",
        description="Gradient-flow landscape scans: certify the absence of spurious local "
        "minima at infinity (Josz & Li 2023), empirically.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("problems", help="list the built-in problems")
    p.set_defaults(func=cmd_problems)
    p = sub.add_parser("flow", help="integrate the flow from random starts, print outcomes")
    _common_flow_args(p, n_default=10000, t1_default=2e4)
    p.set_defaults(func=cmd_flow)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"jaxflow: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
