"""XLA:CPU compiler options against the compile-time goal: what each saves, what it costs.

A new scan of Example 1.1 spends most of its start compiling two programs: the engine's
loop (`_run`) and the classification of a chunk. Lower optimisation settings compile
faster; this measures whether the programs then run slower, side by side:

1. **the classification of a chunk** (10^4 starts of Example 1.1, float32, t1 = 2e4, the
   scan's chunk): its program compiled once per option in this process, then run in
   alternation (`--rounds` rounds, each option once per round; medians), and its verdicts
   compared with the default's;
2. **the whole new scan** (`compile_time.py`'s child, a fresh process and an empty cache
   per run, N = 10^4, one chunk) with the option in `XLA_FLAGS`, i.e. on every program:
   summed trace + lower + compile time, and the rest of the wall time (integration,
   classification, report); `--repeat` runs per option, in alternation.

    python benchmarks/xla_options.py
    python benchmarks/xla_options.py --smoke
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> XLA debug options (the same names as `XLA_FLAGS` without the dashes).
OPTIONS = {
    "default": {},
    "backend optimisation level 0": {"xla_backend_optimization_level": 0},
    "backend optimisation level 1": {"xla_backend_optimization_level": 1},
    "LLVM without expensive passes": {"xla_llvm_disable_expensive_passes": True},
    "without fusion emitters": {"xla_cpu_use_fusion_emitters": False},
}


def as_flags(options: dict) -> str:
    return " ".join(f"--{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in options.items())


def classification_args(n: int, t1: float):
    """The classification program's arguments for one chunk of the README's scan."""
    import jax

    import jaxflow as jf
    from jaxflow import _detect

    p = jf.problems.get("matrix-completion")
    x0 = p.sample(jax.random.key(0), n, jax.numpy.float32)
    res = jf.flow(p, x0, t1=t1)
    captured = {}
    call_cached = _detect.call_cached

    def capture(fn, args, *, static, **kw):
        captured.update(args=args, window=static["window"])
        return None  # outside a scan: the caller compiles as usual

    _detect.call_cached = capture
    try:
        jf.classify(res)
    finally:
        _detect.call_cached = call_cached
    return jax.device_put(captured["args"]), captured["window"]


def classification_rows(n: int, t1: float, rounds: int) -> list[dict]:
    import jax
    import numpy as np

    from jaxflow import _detect

    args, window = classification_args(n, t1)
    program = functools.partial(_detect._classify_batch, window=window)
    compiled, compile_s = {}, {}
    for name, opts in OPTIONS.items():
        t0 = time.perf_counter()
        compiled[name] = jax.jit(program, compiler_options=opts).lower(*args).compile()
        compile_s[name] = time.perf_counter() - t0
    outs = {name: jax.block_until_ready(c(*args)) for name, c in compiled.items()}
    times = {name: [] for name in OPTIONS}
    for _ in range(rounds):
        for name, c in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(c(*args))
            times[name].append(time.perf_counter() - t0)
    ref = outs["default"]
    rows = []
    for name in OPTIONS:
        same = all(np.array_equal(np.asarray(ref[k]), np.asarray(outs[name][k]), equal_nan=True)
                   for k in ref)
        same_status = np.array_equal(np.asarray(ref["status"]), np.asarray(outs[name]["status"]))
        rows.append({
            "program": f"classification of a chunk of {n}", "option": name,
            "flags": as_flags(OPTIONS[name]) or "-",
            "compile s (lower + compile)": compile_s[name],
            "run ms (median)": 1e3 * float(np.median(times[name])),
            "run vs default": float(np.median(times[name]) / np.median(times["default"])),
            "same statuses": same_status, "bit-identical outputs": same,
        })
    return rows


def scan_rows(n: int, t1: float, repeat: int) -> list[dict]:
    from compile_time import run_child

    def child():
        with tempfile.TemporaryDirectory() as tmp:
            return run_child(str(Path(tmp) / "xla-cache"), str(Path(tmp) / "out"), n, 0,
                             "matrix-completion", t1)

    runs = {name: [] for name in OPTIONS}
    before = os.environ.get("XLA_FLAGS")
    try:
        child()  # warm-up, discarded: the first process of a run pays for cold file caches
        for _ in range(repeat):  # options in alternation, so that drifts spread over all
            for name, opts in OPTIONS.items():
                os.environ["XLA_FLAGS"] = ((before or "") + " " + as_flags(opts)).strip()
                runs[name].append(child())
    finally:
        if before is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = before
    rows = []
    for name, rs in runs.items():
        best = min(rs, key=lambda r: r["trace_lower_compile_s"])
        rows.append({
            "program": f"new scan of {n} (every program)", "option": name,
            "flags": as_flags(OPTIONS[name]) or "-",
            "compile s (lower + compile)": best["trace_lower_compile_s"],
            "wall s": best["wall_s"], "wall - compile s": best["wall_s"] - best["start_s"],
            "runs": rs,
        })
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--t1", type=float, default=2e4)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=2, help="fresh-process scans per option")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.t1, args.rounds, args.repeat = 500, 20.0, 3, 1

    from _common import markdown_table, write_results

    cls = classification_rows(args.n, args.t1, args.rounds)
    scans = scan_rows(args.n, args.t1, args.repeat)
    md = ("Classification: compiled once per option in one process, run in alternation "
          f"({args.rounds} rounds), medians; verdicts against the default's.\n\n"
          + markdown_table(cls, ["option", "flags", "compile s (lower + compile)",
                                 "run ms (median)", "run vs default", "same statuses",
                                 "bit-identical outputs"])
          + "\n\nA new scan (fresh process, empty cache) with the option on every program "
          f"(`XLA_FLAGS`); options in alternation, {args.repeat} runs each after a discarded "
          "warm-up run, the one with the least compile time shown:\n\n"
          + markdown_table(scans, ["option", "flags", "compile s (lower + compile)", "wall s",
                                   "wall - compile s"]))
    write_results("xla_options", {"args": vars(args), "classification": cls, "scan": scans}, md,
                  smoke=args.smoke)


if __name__ == "__main__":
    main()
