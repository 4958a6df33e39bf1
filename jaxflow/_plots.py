r"""Figures of a scan (matplotlib, Agg): what `jaxflow report OUT` writes as PNG.

- `final_values`: histogram of the final loss $f(x(t_1))$, one colour per status, on a
  log count axis so that rare outcomes stay visible;
- `escaping_norms`: $\|x(t)\|$ against $t$ on log–log axes for the escaping
  trajectories of the saved subsample (a power law $t^\alpha$ is a straight line; the
  paper's Example 1.1 escapes like $t^{1/4}$);
- `phase_portrait`: for 2-D problems, level sets of $f$, the direction field $-v(x)$ and
  trajectories of the subsample, coloured by status.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._files import write_bytes
from ._schema import arrow_columns, checkpoint_states, start_points
from ._status import Status

__all__ = ["final_values", "escaping_norms", "phase_portrait", "plot_images", "write_plots"]

# One colour per status, stable across figures (colour-blind friendly Okabe–Ito).
STATUS_COLOURS = {
    Status.CONVERGED: "#0072B2",
    Status.ESCAPED: "#D55E00",
    Status.ESCAPING: "#E69F00",
    Status.HORIZON: "#CC79A7",
    Status.BOUNDED: "#009E73",
    Status.UNDECIDED: "#999999",
    Status.MAX_STEPS: "#56B4E9",
    Status.NONFINITE: "#000000",
}
_ESCAPE_LIKE = (Status.ESCAPING, Status.ESCAPED)


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _title(meta: Mapping) -> str:
    return (f"{meta.get('problem', '')}: N = {meta.get('n', '?'):,} starts, t1 = "
            f"{meta.get('t1', float('nan')):g}")


def final_values(table: Mapping[str, np.ndarray], meta: Mapping, ax=None):
    """Histogram of the final value of f, one step curve per status (log counts)."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.5))
    f = np.asarray(table["f"], np.float64)
    st = np.asarray(table["status"])
    finite = np.isfinite(f)
    if not finite.any():
        ax.text(0.5, 0.5, "no finite final values", ha="center", transform=ax.transAxes)
        return ax
    lo, hi = np.min(f[finite]), np.max(f[finite])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.linspace(lo, hi + 1e-9 * (hi - lo), 121)
    for s in Status:
        sel = (st == int(s)) & finite
        k = int(sel.sum())
        if k == 0:
            continue
        c = STATUS_COLOURS.get(s, "grey")
        ax.hist(f[sel], bins=bins, histtype="stepfilled", color=c, alpha=0.35)
        ax.hist(f[sel], bins=bins, histtype="step", linewidth=1.4, color=c,
                label=f"{s.name} ({k:,}, median f = {np.median(f[sel]):.3g})")
    n_nonfinite = int((~finite).sum())
    if n_nonfinite:
        ax.plot([], [], " ", label=f"{n_nonfinite:,} non-finite f not shown")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)
    ax.set_xlabel("f at the end of the trajectory (converged, escaped or at t1)")
    ax.set_ylabel("number of trajectories")
    ax.set_title("Final loss by status\n" + _title(meta), fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.3, which="major")
    return ax


def _escape_statuses(st: np.ndarray) -> tuple[np.ndarray, str]:
    sel = np.isin(st, [int(s) for s in _ESCAPE_LIKE])
    if sel.any():
        return sel, (f"‖x(t)‖ of the {int(sel.sum())} escaping trajectories among the "
                     f"{st.size} saved")
    # No escape: show every saved trajectory, which is the evidence of boundedness.
    return np.ones_like(st, bool), f"‖x(t)‖ of all {st.size} saved trajectories (none escaping)"


def escaping_norms(trajectories: Mapping[str, np.ndarray], ts: np.ndarray, meta: Mapping,
                   table: Mapping[str, np.ndarray] | None = None, ax=None, max_lines: int = 200):
    r"""$\|x(t)\|$ against $t$ (log–log) for the escaping trajectories of the subsample
    (all saved trajectories when none escapes)."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.5))
    st = np.asarray(trajectories["status"])
    norms = np.asarray(trajectories["cp_norm"], np.float64)
    sel, what = _escape_statuses(st)
    t = np.asarray(ts, np.float64)
    pos = t > 0
    idx = np.flatnonzero(sel)[:max_lines]
    seen = set()
    for i in idx:
        y = norms[i, pos]
        ok = np.isfinite(y) & (y > 0)
        s = Status(int(st[i]))
        ax.plot(t[pos][ok], y[ok], color=STATUS_COLOURS.get(s, "grey"), alpha=0.35,
                linewidth=0.8, label=None if s in seen else s.name)
        seen.add(s)
    escaping = bool(np.isin(st, [int(s) for s in _ESCAPE_LIKE]).any())
    if len(idx) and escaping:
        # Escaping trajectories all run to t1, so their pointwise median is a trajectory-
        # like summary (for stopped ones it would be a median of survivors only).
        tp = t[pos]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(np.where(norms[idx][:, pos] > 0, norms[idx][:, pos], np.nan), axis=0)
        ax.plot(tp, med, color="black", linewidth=2.0, label="median")
        alpha = _median_growth_exponent(table)
        if alpha is not None and np.isfinite(med[-1]):
            ref = med[-1] * (tp / tp[-1]) ** alpha
            ax.plot(tp, ref, "--", color="black", linewidth=1.2,
                    label=rf"$\propto t^{{{alpha:.3f}}}$ (median fitted growth exponent $\alpha$)")
    if len(idx):
        ax.legend(frameon=True, framealpha=0.85, fontsize=9, loc="best")
    else:
        ax.text(0.5, 0.5, "no saved trajectory", ha="center", transform=ax.transAxes)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("‖x(t)‖")
    shown = f", {len(idx)} drawn" if len(idx) < int(sel.sum()) else ""
    ax.set_title(f"{what}{shown}\n" + _title(meta), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return ax


def _median_growth_exponent(table) -> float | None:
    if table is None or "growth_exponent" not in table or "status" not in table:
        return None
    a = np.asarray(table["growth_exponent"], np.float64)
    st = np.asarray(table["status"])
    a = a[np.isin(st, [int(s) for s in _ESCAPE_LIKE]) & np.isfinite(a)]
    return float(np.median(a)) if a.size else None


def phase_portrait(problem, trajectories: Mapping[str, np.ndarray], meta: Mapping, ax=None,
                   max_paths: int = 60):
    """Level sets of f, the direction field $-v(x)$ and trajectories of a 2-D problem.

    The trajectories are the engine's own states at the checkpoints (`cp_x_0`, `cp_x_1`,
    saved by `scan(save_states=True)`), joined by straight segments. `problem` (for the
    level sets and the field) may be `None`.
    """
    import jax
    import jax.numpy as jnp

    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 6.0))
    st = np.asarray(trajectories["status"])[:max_paths]
    starts = start_points(trajectories)[:max_paths, :2]
    paths = checkpoint_states(trajectories)
    if paths is not None:
        paths = paths[:max_paths, :, :2].astype(np.float64)
    # The view: the box of starts, enlarged so the flow's first excursions are visible.
    lo, hi = starts.min(axis=0), starts.max(axis=0)
    span = np.maximum(hi - lo, 1e-3)
    lo, hi = lo - 0.75 * span, hi + 0.75 * span
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 161), np.linspace(lo[1], hi[1], 161))
    if problem is not None:
        from ._field_choice import field_for

        pts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))
        fv = np.asarray(jax.vmap(problem.f_flat)(pts), np.float64).reshape(gx.shape)
        finite = np.isfinite(fv)
        if finite.any():
            levels = np.unique(np.quantile(fv[finite], np.linspace(0.0, 1.0, 25)))
            if levels.size >= 2:
                cs = ax.contourf(gx, gy, fv, levels=levels, cmap="Greys", alpha=0.45)
                plt.colorbar(cs, ax=ax, label="f (levels at quantiles of f on the view)",
                             shrink=0.8)
        sx, sy = np.meshgrid(np.linspace(lo[0], hi[0], 25), np.linspace(lo[1], hi[1], 25))
        spts = jnp.asarray(np.stack([sx.ravel(), sy.ravel()], axis=1))
        v = -np.asarray(jax.vmap(field_for(problem).velocity)(spts), np.float64)
        vn = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.where(vn > 0, v / np.maximum(vn, 1e-300), 0.0)
        ax.quiver(sx, sy, v[:, 0].reshape(sx.shape), v[:, 1].reshape(sx.shape), color="0.55",
                  angles="xy", scale=40, width=0.0022, alpha=0.7)
    seen = set()
    for i in range(len(starts)):
        s = Status(int(st[i]))
        label = s.name if s not in seen else None
        seen.add(s)
        c = STATUS_COLOURS.get(s, "grey")
        if paths is not None:
            xy = paths[i]
            ok = np.all(np.isfinite(xy), axis=1)
            ax.plot(xy[ok, 0], xy[ok, 1], color=c, linewidth=1.1, alpha=0.85, label=label)
            label = None
        ax.plot(starts[i, 0], starts[i, 1], "o", color=c, markersize=3, label=label)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("x₀")
    ax.set_ylabel("x₁")
    ax.set_title("Trajectories (dots: starts) over the level sets of f\n" + _title(meta),
                 fontsize=10)
    ax.legend(frameon=True, fontsize=8, loc="upper right", framealpha=0.85)
    return ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    plt.close(fig)
    return buf.getvalue()


def plot_images(result, *, problem=None) -> dict[str, bytes]:
    """The PNG figures of a `ScanResult`, by file name (what `write_plots` writes and the
    HTML report inlines): `final_f_by_status.png`, and with saved trajectories
    `norm_vs_t_escaping.png` and, for 2-D problems, `phase_portrait.png`."""
    plt = _plt()
    sp = result.spec
    meta = {"problem": sp["problem"]["name"], "n": len(result), "t1": float(sp["flow"]["t1"])}
    table = {k: result.column(k) for k in ("f", "status", "growth_exponent")
             if k in result.table.column_names}
    images = {}

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    final_values(table, meta, ax=ax)
    fig.tight_layout()
    images["final_f_by_status.png"] = _png(plt, fig)

    traj = result.trajectories
    if traj is not None and traj.num_rows:
        tcols = arrow_columns(traj)
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        escaping_norms(tcols, result.checkpoint_times, meta, table=table, ax=ax)
        fig.tight_layout()
        images["norm_vs_t_escaping.png"] = _png(plt, fig)
        if sp["problem"]["dim"] == 2:
            fig, ax = plt.subplots(figsize=(6.5, 6.0))
            phase_portrait(problem, tcols, meta, ax=ax)
            fig.tight_layout()
            images["phase_portrait.png"] = _png(plt, fig)
    return images


def write_plots(result, directory, *, problem=None, images=None) -> list[Path]:
    """Writes the PNG figures of a `ScanResult` into `directory`; returns their paths.

    Rendered in memory (`plot_images`, or the given `images`), then written atomically
    without following links (`jaxflow._files`): a planted symlink never redirects a figure.
    """
    if images is None:
        images = plot_images(result, problem=problem)
    directory = Path(directory)
    return [write_bytes(directory, name, data) for name, data in images.items()]
