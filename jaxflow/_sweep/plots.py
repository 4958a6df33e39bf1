r"""Figures of a sweep (matplotlib, Agg): what `jaxflow report` writes for a sweep store.

- `heatmap`: a fraction (escaping by default) over two grid parameters, on a fixed
  $[0, 1]$ colour scale, every cell annotated with the percentage, its 95 % Wilson
  interval, $N$ and the undecided fraction (so a pale cell from 50 starts, or one where
  most trajectories are undecided, is not read like a clean $0$ from $10^4$);
- `line`: the fraction against one parameter with asymmetric 95 % error bars, one line
  per value of an optional second parameter.

Grid values are placed as categories (equally spaced, labelled with their values) in the
heatmap, and on a log axis in the line plot when they are positive and span a factor of
8 or more.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from .._files import write_bytes

__all__ = ["heatmap", "line", "save_figures"]

_LABELS = {"escaping": "escaping", "undecided": "undecided", "settled": "converged or bounded"}


def _plt():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # keep a notebook's inline backend
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _sorted_values(values):
    try:
        return sorted(set(values))
    except TypeError:
        return list(dict.fromkeys(values))


def _select(rows, where: Mapping | None):
    where = dict(where or {})
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def _check_axes(summary, names):
    for name in names:
        if name not in summary.axes:
            raise ValueError(
                f"plot: {name!r} is not a grid parameter; the axes are {summary.axes}.")


def heatmap(summary, x: str, y: str, *, quantity: str = "escaping", where: Mapping | None = None,
            outline: Callable[[dict], bool] | None = None, outline_label: str | None = None,
            undecided_hatch: float = 0.05, ax=None, title: str | None = None):
    """The fraction `quantity` (`"escaping"`, `"undecided"` or `"settled"`) over grid
    parameters `x` and `y`; other axes fixed by `where`. Cells where `outline(row)` holds
    get a black frame (e.g. the overparameterised points), described by `outline_label`.
    Each cell also states its undecided fraction when it is not zero, and is hatched when
    it reaches `undecided_hatch`: there the horizon left the question open."""
    plt = _plt()
    _check_axes(summary, [x, y])
    rows = _select(summary.rows, where)
    xs = _sorted_values(r[x] for r in rows)
    ys = _sorted_values(r[y] for r in rows)
    grid = np.full((len(ys), len(xs)), np.nan)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.45 * len(xs) + 2.6, 0.95 * len(ys) + 1.9))
    for r in rows:
        if r["n"]:
            grid[ys.index(r[y]), xs.index(r[x])] = r[f"{quantity}_fraction"]
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", cmap=cmap, vmin=0.0, vmax=1.0,
                   aspect="auto")
    for r in rows:
        i, j = ys.index(r[y]), xs.index(r[x])
        if not r["n"]:
            ax.text(j, i, "not run", ha="center", va="center", fontsize=8, color="#444444")
            continue
        f, lo, hi = (r[f"{quantity}_{s}"] for s in ("fraction", "low", "high"))
        colour = "white" if f < 0.55 else "black"
        text = f"{100 * f:.1f} %\n[{100 * lo:.1f}, {100 * hi:.1f}]\nN={r['n']:,}"
        undecided = r["undecided_fraction"]
        if quantity != "undecided" and undecided > 0:
            # A low escaping fraction means little when most trajectories are undecided.
            text += f"\nundecided {100 * undecided:.1f} %"
            if undecided >= undecided_hatch:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1.0, 1.0, fill=False, lw=0,
                                           hatch="///", ec="#bbbbbb"))
        back = "#000000" if colour == "white" else "#ffffff"
        ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color=colour,
                linespacing=1.15,
                bbox=dict(boxstyle="round,pad=0.25", fc=back, ec="none", alpha=0.7))
        if outline is not None and outline(r):
            ax.add_patch(plt.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False,
                                       lw=1.6, ec="black"))
    ax.set_xticks(range(len(xs)), [str(v) for v in xs])
    ax.set_yticks(range(len(ys)), [str(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    cbar = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    cbar.set_label(f"{_LABELS[quantity]} fraction (95 % Wilson interval in brackets, %)",
                   fontsize=8)
    head = title or f"{_LABELS[quantity].capitalize()} fraction\n{summary.title()}"
    if outline_label:
        head += f"\nframed: {outline_label}"
    if quantity != "undecided":
        head += f"; hatched: undecided ≥ {100 * undecided_hatch:g} %"
    ax.set_title(head, fontsize=9)
    return ax


def line(summary, x: str, *, hue: str | None = None, quantity: str = "escaping",
         where: Mapping | None = None, ax=None, title: str | None = None,
         log_x: bool | None = None):
    """The fraction `quantity` against grid parameter `x`, with 95 % Wilson error bars;
    one line per value of `hue` (another grid parameter), other axes fixed by `where`."""
    plt = _plt()
    _check_axes(summary, [x] + ([hue] if hue else []))
    rows = [r for r in _select(summary.rows, where) if r["n"]]
    if ax is None:
        _, ax = plt.subplots(figsize=(7.0, 4.2))
    groups = _sorted_values(r[hue] for r in rows) if hue else [None]
    xs_all = _sorted_values(r[x] for r in rows)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in xs_all)
    if log_x is None:
        log_x = numeric and xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    for k, g in enumerate(groups):
        sel = sorted((r for r in rows if hue is None or r[hue] == g),
                     key=lambda r: xs_all.index(r[x]))
        if not sel:
            continue
        pos = np.array([r[x] if numeric else xs_all.index(r[x]) for r in sel], np.float64)
        if len(groups) > 1 and not log_x:
            pos = pos + (k - (len(groups) - 1) / 2) * 0.04 * (np.ptp(pos) or 1.0)
        elif len(groups) > 1:
            pos = pos * 1.04 ** (k - (len(groups) - 1) / 2)  # dodge: bars must not overlap
        f = np.array([r[f"{quantity}_fraction"] for r in sel])
        err = np.array([[r[f"{quantity}_fraction"] - r[f"{quantity}_low"] for r in sel],
                        [r[f"{quantity}_high"] - r[f"{quantity}_fraction"] for r in sel]])
        label = f"{hue} = {g}" if hue else None
        ax.errorbar(pos, f, yerr=np.maximum(err, 0), marker="o", ms=4, capsize=3, lw=1.2,
                    label=label)
    if log_x:
        ax.set_xscale("log")
    if numeric:
        ax.set_xticks(xs_all, [str(v) for v in xs_all])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{_LABELS[quantity]} fraction")
    ax.grid(alpha=0.3)
    if hue:
        ax.legend(frameon=False, fontsize=8)
    ax.set_title(title or f"{_LABELS[quantity].capitalize()} fraction with 95 % intervals\n"
                 f"{summary.title()}", fontsize=9)
    return ax


def _save(fig, directory: Path, name: str) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    return write_bytes(directory, name, buf.getvalue())


def save_figures(summary, directory) -> list[Path]:
    """The sweep's figures as PNG in `directory`: a heatmap of the escaping fraction over
    the first two axes (others at their first value) and a line plot over the first axis
    (one line per value of the second)."""
    directory = Path(directory)
    axes = summary.axes
    written = []
    first = {a: _sorted_values(r[a] for r in summary.rows)[0] for a in axes[2:]}
    if len(axes) >= 2:
        ax = heatmap(summary, axes[0], axes[1], where=first)
        written.append(_save(ax.figure, directory, "escaping_heatmap.png"))
    ax = line(summary, axes[0], hue=axes[1] if len(axes) >= 2 else None, where=first)
    written.append(_save(ax.figure, directory, "escaping_line.png"))
    return written
