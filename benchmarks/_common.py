"""Shared helpers for the benchmark scripts: machine tags and result files.

Every script writes `benchmarks/results/<name>-<machine>.json` and a Markdown table next
to it. Times exclude compilation (a warm-up call first) and call `block_until_ready`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import diffrax
    import jax
    import jaxlib
    import numpy as np

    dev = jax.devices()[0]
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "diffrax": diffrax.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import jaxflow

        info["jaxflow"] = jaxflow.__version__
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent,
        )
        if rev.returncode == 0:
            info["commit"] = rev.stdout.strip()
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def machine_tag(info: dict) -> str:
    if info["backend"] == "gpu":
        name = info["device"]
    else:
        name = f"{info['cpu']}-{info['cpu_count']}cores"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(best wall time over `repeat` calls after one warm-up, last output)."""
    import jax

    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t0)
    return best, out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_results(name: str, payload: dict, table_md: str, *, smoke: bool = False) -> Path:
    """Writes JSON + Markdown; smoke runs go to a `-smoke` file that is not committed."""
    info = payload.setdefault("machine", machine_info())
    tag = machine_tag(info) + ("-smoke" if smoke else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{tag}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    md = (
        f"# {name}\n\nMachine: {info['cpu']} ({info['cpu_count']} cores), backend "
        f"{info['backend']} ({info['device']}), jax {info['jax']}, diffrax {info['diffrax']}, "
        f"{info['date']}.\n\n{table_md}\n"
    )
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {path}")
    return path


def floor_gd(problem, x0, lr, steps):
    """The cost floor: `optax.sgd(lr)` with `jax.grad`, vmapped, in a bare `fori_loop`."""
    import jax
    import optax

    opt = optax.sgd(lr)
    grad = jax.vmap(jax.grad(problem.f_flat))

    @jax.jit
    def run(x):
        state = jax.vmap(opt.init)(x)

        def body(_, carry):
            x, s = carry
            u, s = jax.vmap(opt.update)(grad(x), s, x)
            return x + u, s

        return jax.lax.fori_loop(0, steps, body, (x, state))[0]

    return run


def status_groups() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The statuses the sweep studies count as escaping, and as undecided."""
    import jaxflow as jf

    S = jf.Status
    return ((int(S.ESCAPING), int(S.ESCAPED)),
            (int(S.UNDECIDED), int(S.HORIZON), int(S.MAX_STEPS), int(S.NONFINITE)))


def start_points(result, dim):
    """The starts of a stored scan, `(n, dim)`, from its `start_j` columns."""
    import numpy as np

    cols = result.table
    return np.stack([cols.column(f"start_{j}").to_numpy() for j in range(dim)], -1)
