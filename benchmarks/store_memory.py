"""Peak driver memory of `jaxflow.scan` + `jaxflow.load` against N: flat in N.

Each size runs in a fresh subprocess (CPU, tiny horizon t1 = 1e-3, chunk_size 10^5) and
reports the process's peak resident set size (`resource.getrusage`), the peak after the
scan, and Arrow's allocation high-water mark. The report is built from per-chunk
summaries, so the peak should not grow with N (compile-time and chunk buffers dominate).

    python benchmarks/store_memory.py              # N = 10^6 and 10^7
    python benchmarks/store_memory.py --n 1000000 3000000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import RESULTS, machine_info, machine_tag

CHILD = r"""
import json, resource, sys, time
import jax
jax.config.update("jax_platforms", "cpu")
import pyarrow as pa
import jaxflow as jf

n, out, chunk = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
res = jf.scan("matrix-completion", n, out=out, t1=1e-3, chunk_size=chunk,
              save_trajectories=0, compilation_cache=False)
scan_s = time.perf_counter() - t0
peak_scan = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
loaded = jf.load(out)
load_s = time.perf_counter() - t0
assert loaded.report.n == n
print(json.dumps({
    "n": n, "chunk_size": chunk, "scan_s": scan_s, "load_s": load_s,
    "peak_rss_after_scan_mb": peak_scan / 1024,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "arrow_max_memory_mb": pa.default_memory_pool().max_memory() / 2**20,
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, nargs="+", default=[10**6, 10**7])
    ap.add_argument("--chunk-size", type=int, default=100_000)
    args = ap.parse_args()
    rows = []
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), str(Path(tmp) / "scan"),
                 str(args.chunk_size)], capture_output=True, text=True, check=True,
            )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    info = machine_info()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"store_memory-{machine_tag(info)}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    lines = ["| N | chunk | scan s | load s | peak RSS MB | Arrow peak MB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']:,} | {r['chunk_size']:,} | {r['scan_s']:.1f} | {r['load_s']:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['arrow_max_memory_mb']:.0f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
