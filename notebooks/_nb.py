"""Shared by the notebooks: run size from `JAXFLOW_NOTEBOOK_SCALE`, number formats, and
the closing "paper says / jaxflow measured" table.

`JAXFLOW_NOTEBOOK_SCALE=small` (what `tests/test_notebooks.py` uses) runs every notebook
in seconds; the default `full` is what the committed outputs show.
"""

from __future__ import annotations

import os

from IPython.display import Markdown, display

from jaxflow._stats import wilson_interval

SCALE = os.environ.get("JAXFLOW_NOTEBOOK_SCALE", "full")
if SCALE not in ("small", "full"):
    raise ValueError(f"JAXFLOW_NOTEBOOK_SCALE must be 'small' or 'full', got {SCALE!r}.")

RESULTS_MARKER = "<!-- jaxflow-results -->"


def size(small, full):
    """`small` when the notebook runs at test size, else `full`."""
    return small if SCALE == "small" else full


def fraction(k: int, n: int) -> str:
    """`k/n` in percent with its 95 % Wilson interval: `8.64 % [8.26, 9.04] (1728/20000)`."""
    lo, hi = wilson_interval(int(k), int(n))
    return f"{100 * k / n:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}] ({int(k)}/{int(n)})"


def results_table(rows, title: str = "Paper says / jaxflow measured"):
    """Displays the closing table; `rows` are `(claim, paper says, jaxflow measured)`."""
    lines = [
        RESULTS_MARKER,
        f"**{title}** (scale: `{SCALE}`)",
        "",
        "| claim | paper says | jaxflow measured |",
        "|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    display(Markdown("\n".join(lines)))
