"""`jaxflow sweep` and `jaxflow report` on a sweep store (wired into `jaxflow.cli`)."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["add_parser", "cmd_sweep", "report_sweep"]

SWEEP_N_DEFAULT = 10_000


def add_parser(sub) -> None:
    """Adds the `sweep` subcommand to `jaxflow`'s subparsers."""
    from .. import cli

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
    cli._common_flow_args(p, n_default=SWEEP_N_DEFAULT, t1_default=2e4)
    p.add_argument("--grid", action="append", default=[], metavar="NAME=VALUES", required=True,
                   help="a grid axis (repeatable), e.g. --grid hidden=1,2,4 --grid points=1:8*2")
    p.add_argument("--out", required=True, help="the sweep's store directory")
    p.add_argument("--chunk-size", type=int, default=cli.SCAN_CHUNK_DEFAULT,
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
    cli._width_arg(p)
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
    from .. import cli
    from .api import sweep
    from .grid import parse_grid

    grid = parse_grid(args.grid)  # bad grids fail here, before JAX starts
    params = cli._parse_params(args.param)
    for name in ("n", "chunk_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got "
                             f"{getattr(args, name)}")
    devices = cli._select_device(args.device)
    cli._enable_dtype(args.dtype)
    import diffrax
    from rich.console import Console

    if ":" in args.problem and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    cache = False if args.no_compilation_cache else (args.compilation_cache or None)
    executor = client = max_in_flight = None
    if args.dask:
        try:
            from distributed import Client
        except ImportError:
            raise ValueError("--dask needs Dask: pip install 'jaxflow[dask]'") from None
        client = Client(args.dask)
        executor = client.get_executor()
        max_in_flight = max(2, 2 * sum(client.nthreads().values()))
        devices = None
    console = cli._console(args)
    t0 = time.perf_counter()
    try:
        with _SweepProgressBar(Console(stderr=True), enabled=not args.quiet) as bar:
            res = sweep(
                args.problem, grid, args.n, out=args.out, params=params, t1=args.t1,
                seed=args.seed, chunk_size=args.chunk_size, dtype=args.dtype,
                solver=cli._solver_from_name(args.solver),
                stepsize_controller=diffrax.PIDController(rtol=args.rtol, atol=args.atol),
                gtol=args.gtol, escape_radius=args.escape_radius,
                save_trajectories=args.save_trajectories, executor=executor, devices=devices,
                progress=bar, compilation_cache=cache, max_in_flight=max_in_flight,
            )
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(res.summary.to_json())
        return cli.EXIT_OK
    console.print(res.summary.to_rich())
    console.print(
        f"{len(res.points)} points in {args.out} ({len(res.computed_points)} computed, "
        f"{len(res.skipped_points)} already stored; {time.perf_counter() - t0:.1f} s). "
        f"Figures and Markdown/JSON/Parquet: jaxflow report {args.out}",
        soft_wrap=True, highlight=False,
    )
    return cli.EXIT_OK


def report_sweep(args) -> int:
    """`jaxflow report OUT` when OUT is a sweep: the summary, and its files in OUT/report."""
    from rich.console import Console

    from .. import cli
    from .api import load_sweep
    from .store import SweepStore

    store = SweepStore(args.out)
    manifest = store.read()
    if manifest["spec"]["dtype"] == "float64":
        cli._enable_dtype("float64")
    res = load_sweep(args.out)
    summary = res.summary
    console = cli._console(args)
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
    return cli.EXIT_OK
