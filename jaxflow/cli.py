"""Command line: `jaxflow problems | flow | scan | sweep | report`.

Exit codes (stable; messages go to stderr, prefixed `jaxflow: error:`):

| code | meaning |
|---|---|
| 0 | success |
| 1 | unexpected internal error (a traceback follows) |
| 2 | bad usage or bad input (unknown problem, n <= 0, NaN bounds, unwritable out/, ...) |
| 3 | out/ holds a different scan; refused, nothing modified (the differing fields are listed) |
| 4 | out/ is being written by another process (lock held) |
| 5 | out/ is not a readable scan, is damaged or inconsistent (manifest hash, journal, a chunk's
      hash, metadata or rows), or holds a symbolic link where jaxflow writes |
| 6 | a chunk failed on a worker, or could not be written (disk full); finished chunks are
      stored, rerun to resume |
| 130 | interrupted (Ctrl-C); finished chunks are stored, rerun the same command to resume |
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_SPEC_MISMATCH = 3
EXIT_LOCKED = 4
EXIT_STORE = 5
EXIT_CHUNK_FAILED = 6
EXIT_INTERRUPTED = 130

# `jaxflow scan PROBLEM` with no options: sized to take about a minute on a 2-core laptop
# CPU for Example 1.1 (benchmarks/scan_cli.py: 42 s of CPU time), enough for a 95 % interval of
# +-0.08 percentage points on its escaping fraction.
SCAN_N_DEFAULT = 500_000
SCAN_CHUNK_DEFAULT = 10_000


def _common_flow_args(p: argparse.ArgumentParser, *, n_default: int, t1_default: float):
    p.add_argument(
        "problem",
        help="built-in problem name (see `jaxflow problems`) or package.module:function "
        "(a Problem, a factory returning one, or an objective f(x) with --param dim=D)",
    )
    p.add_argument("--n", type=int, default=n_default, help="number of random starts")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for the starts")
    p.add_argument("--t1", type=float, default=t1_default, help="horizon of the flow")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument(
        "--solver", default="auto",
        help="auto (default: Rodas4 to d = 32, Kvaerno5 to 400, RodasKrylov above; "
        "ProxLinear if nonsmooth) | "
        "a jaxflow stepper: Rodas4, RodasKrylov, ProxLinear[:estimate=midpoint] | "
        "a diffrax solver: Kvaerno5, Tsit5, ...",
    )
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-8)
    p.add_argument("--gtol", type=float, default=None, help="stationarity tolerance")
    p.add_argument("--escape-radius", type=float, default=1e6)
    p.add_argument(
        "--extend-undecided", type=float, default=None, metavar="T",
        help="continue trajectories still UNDECIDED at --t1, a decade at a time, up to T",
    )
    p.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="problem parameter (repeatable), e.g. --param depth=3",
    )


def _width_arg(p: argparse.ArgumentParser):
    p.add_argument(
        "--width", type=int, default=None, metavar="N",
        help="draw the report N columns wide (default: the terminal's width, 80 in a pipe); "
        "narrow tables wrap and stack columns, never cutting a number",
    )


def _console(args):
    """The stdout console, `--width` columns wide when given."""
    from rich.console import Console

    width = getattr(args, "width", None)
    if width is not None and width < 40:
        raise ValueError(f"--width must be at least 40, got {width}")
    return Console(width=width)


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
    """`--solver`: `auto`, a diffrax solver's class name (`Kvaerno5`), or a jaxflow stepper
    (`Rodas4`, `ProxLinear`, also as `jaxflow.Rodas4`) with optional parameters
    (`ProxLinear:estimate=euler`)."""
    import json

    import diffrax

    from ._stepper import STEPPERS

    if name == "auto":
        return "auto"
    base, _, rest = name.partition(":")
    stepper = base.removeprefix("jaxflow.")
    if stepper in STEPPERS:
        params = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"--solver {name!r}: parameters are key=value, got {item!r}.")
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
        try:
            return STEPPERS[stepper](**params)
        except TypeError as e:
            raise ValueError(f"--solver {name!r}: {e}") from None
    if rest:
        raise ValueError(f"--solver {name!r}: only jaxflow steppers take parameters.")
    cls = getattr(diffrax, base, None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, diffrax.AbstractSolver):
        known = ", ".join(sorted(STEPPERS))
        raise ValueError(
            f"unknown solver {name!r}: a diffrax solver (Kvaerno5, Tsit5, Dopri5, ...) or a "
            f"jaxflow stepper ({known})."
        )
    return cls()


def _enable_dtype(dtype: str):
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)


def cmd_problems(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from . import problems
    from ._unicode_math import docstring_text

    table = Table(title="jaxflow built-in problems")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("what it is", overflow="fold")
    for name in problems.names():
        doc = problems.info(name).strip().split("\n\n")[0].replace("\n", " ")
        table.add_row(name, docstring_text(doc))
    Console().print(table)
    return EXIT_OK


def cmd_flow(args) -> int:
    _enable_dtype(args.dtype)
    import diffrax
    import jax
    import jax.numpy as jnp

    from . import problems
    from ._flow import flow
    from ._render import outcome_table

    console = _console(args)
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
        extend_undecided=args.extend_undecided,
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
    from ._report import Report

    report = Report.from_flow(problem, res)  # classify (jaxflow.classify), then report
    console.print(report.to_rich())
    return EXIT_OK


def _select_device(device: str | None):
    """`--device cpu|gpu`: must run before JAX initialises a backend."""
    import jax

    if device is None:
        return None
    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
        return jax.devices("cpu")
    # Deterministic GPU kernels (reductions, scatters, no autotuning), so that a scan is
    # bit-reproducible on one GPU model; must be set before the backend starts.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_gpu_deterministic_ops=true").strip()
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as e:
        raise ValueError(
            f"--device gpu: JAX sees no GPU ({e}). Install a GPU build of JAX "
            "(pip install 'jax[cuda12]') or use --device cpu."
        ) from None
    return gpus


def _default_out(args, params: dict) -> str:
    import hashlib
    import json

    from ._options import solver_to_spec
    from ._scan.references import resolve_problem

    # The solver as resolved ("auto" names the current default), so that a scan with other
    # defaults goes to another directory instead of being refused by the old one's spec.
    solver = solver_to_spec(
        _solver_from_name(args.solver), resolve_problem(args.problem, params)[0]
    )
    key = json.dumps(
        [args.problem, params, args.n, args.seed, args.t1, args.dtype, args.chunk_size,
         solver, args.rtol, args.atol, args.gtol, args.escape_radius,
         args.save_trajectories]
        + ([] if args.extend_undecided is None else [args.extend_undecided]),
        sort_keys=True,
    )
    tag = hashlib.sha256(key.encode()).hexdigest()[:8]
    name = args.problem.replace(":", "_").replace("/", "_").replace(".", "_")
    return os.path.join("jaxflow-out", f"{name}-n{args.n}-seed{args.seed}-{tag}")


class _ScanProgressBar:
    """A rich progress bar on stderr: chunks, trajectories, trajectories/s, ETA."""

    def __init__(self, console, enabled: bool):
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.enabled = enabled
        # Fits 80 columns: "scan ━━━━━━ 20/50 chunks 200,000/500,000 6,012 traj/s ETA 0:00:49".
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=12),
            TextColumn("{task.fields[chunks]} chunks"),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f}"),
            TextColumn("{task.fields[rate]}"), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, disable=not enabled,
        )
        self.task = None
        self.t_first = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, p):
        chunks = f"{p.chunks_done}/{p.chunks_total}"
        if self.task is None:
            desc = "compile" if p.chunks_done < p.chunks_total else "stored"
            self.task = self.progress.add_task(
                desc, total=p.trajectories_total, completed=p.trajectories_done,
                chunks=chunks, rate="",
            )
            return
        now = time.perf_counter()
        if self.t_first is None:
            # The first chunk includes compilation: measure the rate from its end on.
            self.t_first, self.rows_first = now, p.trajectories_now
            rate = ""
        else:
            rows = p.trajectories_now - self.rows_first
            rate = f"{rows / max(now - self.t_first, 1e-9):,.0f} traj/s"
        self.progress.update(
            self.task, completed=p.trajectories_done, chunks=chunks, rate=rate,
            description="scan",
        )


def _dask_executor(args):
    """`--dask ADDRESS`: (executor, client, max_in_flight), or Nones without it."""
    if not args.dask:
        return None, None, None
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--dask needs Dask: pip install 'jaxflow[dask]'") from None
    client = Client(args.dask)
    # Two chunks in flight per worker thread of the cluster keep every thread busy.
    return client.get_executor(), client, max(2, 2 * sum(client.nthreads().values()))


def _store_run_options(args) -> dict:
    """The keyword arguments `scan` and `sweep` share, from the command line."""
    import diffrax

    return dict(
        t1=args.t1, seed=args.seed, chunk_size=args.chunk_size, dtype=args.dtype,
        solver=_solver_from_name(args.solver),
        stepsize_controller=diffrax.PIDController(rtol=args.rtol, atol=args.atol),
        gtol=args.gtol, escape_radius=args.escape_radius,
        extend_undecided=args.extend_undecided, save_trajectories=args.save_trajectories,
        compilation_cache=False if args.no_compilation_cache else (
            args.compilation_cache or None),
    )


def cmd_scan(args) -> int:
    devices = _select_device(args.device)
    _enable_dtype(args.dtype)
    from rich.console import Console

    from ._scan import scan

    if ":" in args.problem and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: user modules in the cwd
    params = _parse_params(args.param)
    for name in ("n", "chunk_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    out = args.out = args.out or _default_out(args, params)
    executor, client, max_in_flight = _dask_executor(args)
    if client is not None:
        devices = None
    console = _console(args)
    err_console = Console(stderr=True)
    try:
        with _ScanProgressBar(err_console, enabled=not args.quiet) as bar:
            res = scan(
                args.problem, args.n, out=out, params=params, devices=devices, progress=bar,
                executor=executor, max_in_flight=max_in_flight, **_store_run_options(args),
            )
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(res.report.to_json())
        return EXIT_OK
    console.print(res.report.to_rich())
    done = len(res.computed_chunks)
    console.print(
        f"{len(res):,} trajectories in {out} ({done} chunks computed, "
        f"{len(res.skipped_chunks)} already stored; {res.wall_s:.1f} s). "
        f"Plots, Markdown, JSON and HTML: jaxflow report {out}",
        soft_wrap=True, highlight=False,
    )
    return EXIT_OK


def cmd_report(args) -> int:
    from rich.console import Console

    from ._scan.store import Store
    from ._sweep.store import SweepStore

    if SweepStore.is_sweep(args.out):
        return report_sweep(args)

    store = Store(args.out)
    manifest = store.read_manifest()
    if manifest is None:
        raise FileNotFoundError(f"{args.out} is not a jaxflow scan (no manifest.json)")
    env = manifest.get("environment")
    if isinstance(env, dict) and env.get("x64") is True:
        _enable_dtype("float64")
    from ._scan import load
    from ._scan.references import bounded_builtin, resolve_problem

    # Opening a store never runs code it names: the problem is imported only when the
    # user names it; a stored built-in is rebuilt (for the phase portrait) only with
    # small params.
    problem = None
    if args.problem is not None:
        problem, _ = resolve_problem(args.problem, _parse_params(args.param))
    elif not args.no_plots and manifest["spec"]["problem"].get("dim") == 2:
        try:
            problem = bounded_builtin(manifest["spec"]["problem"].get("source", {}), 2)
        except Exception:
            problem = None
    res = load(args.out, problem=problem if args.problem is not None else None)
    console = _console(args)
    if args.json:
        print(res.report.to_json())
    else:
        console.print(res.report.to_rich())
        if not res.complete:
            console.print(
                f"[yellow]partial scan:[/] {len(res):,} of {res.spec['n']:,} trajectories stored; "
                "rerun the scan command to finish it.", soft_wrap=True,
            )
    if args.to is None:
        store.check_links()  # OUT/report and the files in it: never written through a link
    target = args.to or os.path.join(args.out, "report")
    try:
        written = res.report.write(target, plots=not args.no_plots, result=res, problem=problem)
    except OSError as e:  # a read-only store, a full disk: the report was printed above
        raise ValueError(
            f"cannot write the report files into {target}: {e.strerror or e}. The report was "
            "printed; write the files elsewhere with --to DIR."
        ) from None
    (Console(stderr=True) if args.json else console).print(
        "wrote " + ", ".join(map(str, written)), soft_wrap=True, highlight=False
    )
    return EXIT_OK


# --------------------------------------------------------------------------- sweeps
SWEEP_N_DEFAULT = 10_000


def add_sweep_parser(sub) -> None:
    """Adds the `sweep` subcommand to `jaxflow`'s subparsers."""
    p = sub.add_parser(
        "sweep",
        help="scan a problem at every point of a parameter grid into one resumable store",
        description="Scan PROBLEM from N random starts at every point of a grid of its "
        "parameters (--grid NAME=VALUES, repeatable; --param for fixed ones), into one store "
        "OUT (rerun the same command to resume; add grid values to compute only the new "
        "points), then print the summary: per point the escaping and undecided fractions with "
        "95 %% intervals, the values at infinity, critical values and the Theorem 1.2 verdict. "
        "VALUES: v1,v2,... | A:B[:STEP] (arithmetic, inclusive) | A:B*R (geometric, ratio R).",
        epilog="exit codes as for `jaxflow scan`: 0 done; 1 internal error; 2 bad input or bad "
        "grid (nothing written); 3 OUT holds a different sweep or the grid lost values "
        "(nothing modified); 4 OUT locked; 5 OUT damaged; 6 a chunk failed; 130 interrupted.",
    )
    _common_flow_args(p, n_default=SWEEP_N_DEFAULT, t1_default=2e4)
    p.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES", required=True,
                   help="a grid axis (repeatable), e.g. --grid hidden=1,2,4 --grid points=1:8*2")
    p.add_argument("--out", required=True, help="the sweep's store directory")
    p.add_argument("--chunk-size", type=int, default=SCAN_CHUNK_DEFAULT,
                   help="starts per chunk (part of the spec)")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None)
    p.add_argument("--save-trajectories", type=int, default=256,
                   help="keep the checkpoint series of this many starts per point")
    p.add_argument("--dask", metavar="ADDRESS", default=None,
                   help="run chunks on a Dask cluster (scheduler address)")
    p.add_argument("--compilation-cache", metavar="DIR", default=None)
    p.add_argument("--no-compilation-cache", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    _width_arg(p)
    p.set_defaults(func=cmd_sweep)


class _SweepProgressBar:
    """Two rich bars on stderr: grid points, and the current point's chunks."""

    def __init__(self, console, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16),
            MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
            console=console, disable=not enabled,
        )
        self.points = self.chunks = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, p):
        label = ", ".join(f"{k}={v}" for k, v in p.params.items())
        if self.points is None:
            self.points = self.progress.add_task("points", total=p.points_total, what="")
            self.chunks = self.progress.add_task("chunks", total=1, what="")
        if p.scan is None:
            self.progress.update(self.points, completed=p.point, what=label)
            self.progress.update(self.chunks, completed=0, total=1, what="compiling")
            return
        s = p.scan
        self.progress.update(self.chunks, completed=s.chunks_done, total=s.chunks_total,
                             what=f"{s.trajectories_done:,} trajectories")
        if s.chunks_done == s.chunks_total:
            self.progress.update(self.points, completed=p.point + 1, what=label)


def cmd_sweep(args) -> int:
    from ._sweep.api import sweep
    from ._sweep.grid import parse_grid

    grid = parse_grid(args.grid)  # bad grids fail here, before JAX starts
    params = _parse_params(args.param)
    for name in ("n", "chunk_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got "
                             f"{getattr(args, name)}")
    devices = _select_device(args.device)
    _enable_dtype(args.dtype)
    from rich.console import Console

    if ":" in args.problem and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    executor, client, max_in_flight = _dask_executor(args)
    if client is not None:
        devices = None
    console = _console(args)
    t0 = time.perf_counter()
    try:
        with _SweepProgressBar(Console(stderr=True), enabled=not args.quiet) as bar:
            res = sweep(
                args.problem, grid, args.n, out=args.out, params=params, devices=devices,
                progress=bar, executor=executor, max_in_flight=max_in_flight,
                **_store_run_options(args),
            )
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(res.summary.to_json())
        return EXIT_OK
    console.print(res.summary.to_rich())
    console.print(
        f"{len(res.points)} points in {args.out} ({len(res.computed_points)} computed, "
        f"{len(res.skipped_points)} already stored; {time.perf_counter() - t0:.1f} s). "
        f"Figures and Markdown/JSON/Parquet: jaxflow report {args.out}",
        soft_wrap=True, highlight=False,
    )
    return EXIT_OK


def report_sweep(args) -> int:
    """`jaxflow report OUT` when OUT is a sweep: the summary, and its files in OUT/report."""
    from rich.console import Console

    from ._sweep.api import load_sweep
    from ._sweep.store import SweepStore

    store = SweepStore(args.out)
    manifest = store.read()
    if manifest["spec"]["dtype"] == "float64":
        _enable_dtype("float64")
    res = load_sweep(args.out)
    summary = res.summary
    console = _console(args)
    if args.json:
        print(summary.to_json())
    else:
        console.print(summary.to_rich())
        if not res.complete:
            console.print("[yellow]partial sweep:[/] some points are not finished; rerun the "
                          "sweep command to finish them.", soft_wrap=True)
    if args.to is None:
        store.check_links()
    target = args.to or os.path.join(args.out, "report")
    try:
        written = summary.write(target, plots=not args.no_plots)
    except OSError as e:
        raise ValueError(f"cannot write the report files into {target}: {e.strerror or e}. "
                         "Write them elsewhere with --to DIR.") from None
    (Console(stderr=True) if args.json else console).print(
        "wrote " + ", ".join(map(str, written)), soft_wrap=True, highlight=False)
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
    _width_arg(p)
    p.set_defaults(func=cmd_flow)

    p = sub.add_parser(
        "scan",
        help="chunked, resumable scan from many starts into OUT/, then the report",
        description="Integrate and classify the flow from N random starts, chunk by chunk, "
        "into a crash-safe store (rerun the same command to resume), then print the report. "
        f"Defaults: --n {SCAN_N_DEFAULT}, --t1 2e4, --chunk-size {SCAN_CHUNK_DEFAULT}, --seed 0.",
        epilog="exit codes: 0 done; 1 internal error; 2 bad input; 3 OUT holds a different "
        "scan (nothing modified); 4 OUT locked by another process; 5 OUT damaged, edited or "
        "holding a symbolic link; 6 a chunk failed or could not be written (finished chunks "
        "kept, rerun to resume); 130 interrupted (rerun to resume).",
    )
    _common_flow_args(p, n_default=SCAN_N_DEFAULT, t1_default=2e4)
    p.add_argument("--out", default=None,
                   help="store directory (default: jaxflow-out/<problem>-n<N>-seed<S>-<hash>)")
    p.add_argument("--chunk-size", type=int, default=SCAN_CHUNK_DEFAULT,
                   help="starts per chunk (part of the spec: changing it changes the starts)")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None,
                   help="run on the CPU or on every local GPU (default: JAX's default backend)")
    p.add_argument("--save-trajectories", type=int, default=1000,
                   help="keep the checkpoint series of this many starts for plots")
    p.add_argument("--dask", metavar="ADDRESS", default=None,
                   help="run chunks on a Dask cluster (scheduler address, e.g. tcp://host:8786)")
    p.add_argument("--compilation-cache", metavar="DIR", default=None,
                   help="persistent compilation cache directory (default: user cache dir, "
                   "or $JAXFLOW_COMPILATION_CACHE)")
    p.add_argument("--no-compilation-cache", action="store_true",
                   help="do not use the persistent compilation cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    _width_arg(p)
    p.set_defaults(func=cmd_scan)

    add_sweep_parser(sub)

    p = sub.add_parser(
        "report",
        help="re-print a scan's report; write Markdown, JSON, HTML and PNG plots",
        description="Read the store OUT (verifying every chunk's hash), print the report and "
        "write report.md, report.json, index.html (one self-contained page) and PNG figures into "
        "OUT/report (or --to DIR).",
        epilog="exit codes: 0 done; 1 internal error; 2 no such store, or the report files "
        "cannot be written (the report is still printed; use --to); 5 damaged or edited store "
        "(rerun the scan to recompute a corrupted chunk).",
    )
    p.add_argument("out", help="the scan (or sweep) directory")
    p.add_argument("--to", default=None, help="output directory (default OUT/report)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--problem", default=None, metavar="PROBLEM",
        help="type critical points with this problem (built-in name or package.module:function, "
        "imported because you name it) instead of the types stored by the scan",
    )
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="parameter of --problem (repeatable)")
    _width_arg(p)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ._scan import ScanError, ScanLockedError, SpecMismatchError, StoreError

    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(code: int, msg: str) -> int:
        from ._render import terminal_text

        # Messages can quote a store's strings: no escape sequence reaches the terminal.
        print(f"jaxflow: error: {terminal_text(msg, keep_newlines=True)}", file=sys.stderr)
        return code

    try:
        return args.func(args)
    except SpecMismatchError as e:
        return fail(EXIT_SPEC_MISMATCH, str(e))
    except ScanLockedError as e:
        return fail(EXIT_LOCKED, str(e))
    except StoreError as e:
        return fail(EXIT_STORE, str(e))
    except ScanError as e:
        return fail(EXIT_CHUNK_FAILED, str(e))
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f" in {out}" if out else ""
        return fail(EXIT_INTERRUPTED, f"interrupted; finished chunks are stored{where}. Rerun "
                    "the same command to resume.")
    except (ValueError, TypeError, KeyError, PermissionError, FileNotFoundError,
            NotADirectoryError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return fail(EXIT_USAGE, msg)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
