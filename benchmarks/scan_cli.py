"""Wall and CPU time of a bare `jaxflow scan matrix-completion`: cold, cached, resumed.

Three runs of the command exactly as a user types it, each in a fresh working directory:

1. **cold**: an empty persistent compilation cache (everything compiles);
2. **cached**: the cache of run 1, a new output directory (compilation is loaded from the
   cache; tracing and lowering are still paid);
3. **resumed**: run 1's directory again (every chunk already stored: only the report).

`first_chunk_s` is the time of the first chunk, which includes compiling (or loading from
the cache) the sampling, integration and classification programs; `median_chunk_s` is a
typical chunk of 10,000 trajectories.

CPU time (user + sys of the child) is reported next to wall time because on a shared
machine the wall time mostly measures the other users; on an otherwise idle 2-core
laptop the wall time is close to the CPU time (the integration loop is single-threaded).

    python benchmarks/scan_cli.py            # the default N
    python benchmarks/scan_cli.py --smoke    # N = 20000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import tempfile
import time
from pathlib import Path


def run(cwd: Path, cache: Path, extra: list[str], computes: bool = True) -> dict:
    env = dict(os.environ, JAXFLOW_COMPILATION_CACHE=str(cache))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(["jaxflow", "scan", "matrix-completion", *extra], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    # Seconds of the first computed chunk (compilation included) and of the others.
    journal = sorted(cwd.glob("jaxflow-out/*/journal.jsonl"))[-1]
    secs = [json.loads(line)["seconds"] for line in journal.read_text().splitlines()]
    if not computes:
        secs = []
    m = re.search(r"ESCAPING\s*│\s*([\d,]+)\s*│\s*([\d.]+) %\s*│\s*\[([\d.]+) %, ([\d.]+) %\]",
                  proc.stdout)
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load_avg_1min": (load0 + os.getloadavg()[0]) / 2,
        "first_chunk_s": secs[0] if secs else None,
        "median_chunk_s": float(sorted(secs)[len(secs) // 2]) if secs else None,
        "escaping": m.group(2) + " % [" + m.group(3) + ", " + m.group(4) + "] %" if m else "",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    extra = ["--n", "20000"] if args.smoke else []
    from _common import markdown_table, write_results

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "xla-cache"
        for d in ("cold", "cached"):
            (tmp / d).mkdir()
        rows = []
        for label, cwd in (("cold", tmp / "cold"), ("cached", tmp / "cached"),
                           ("resumed", tmp / "cold")):
            r = run(cwd, cache, extra, computes=label != "resumed")
            rows.append({"run": label, **r})
            print(rows[-1])
    from jaxflow.cli import SCAN_N_DEFAULT

    payload = {"n": 20000 if args.smoke else SCAN_N_DEFAULT, "runs": rows}
    table = markdown_table(rows, ["run", "wall_s", "cpu_s", "first_chunk_s", "median_chunk_s",
                                  "load_avg_1min", "escaping"])
    write_results("scan_cli", payload, table, smoke=args.smoke)


if __name__ == "__main__":
    main()
