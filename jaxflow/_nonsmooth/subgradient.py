r"""`minnorm_subgradient`: the certified minimal-norm subgradient at many points.

Work is tiered by what each point needs: one interpreted gradient that counts the tied
kinks (`MinNormField.needs_qp`) for all points; the QP only where a kink is tied, sized
by how many (a few slot counts, `_tiers`); the realisability test only where no other
certificate applies. One driver (`_drive`) decides this for both ways of running it:

- traced (inside `jit`/`vmap`): one program, each stage a `fori_loop` over the points
  that need it, compacted into fixed-size chunks (`_TracedStages`);
- eager (concrete inputs): each stage compiled and run only when some point needs it,
  on those rows, padded to a few bucket sizes (`_EagerStages`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._memory import lane_memory_budget
from .._problem import Problem
from .certificates import Exactness
from .field import NO_KINKS, MinNormField, MinNormResult, minnorm_field_of
from .options import MinNormOptions

__all__ = ["minnorm_subgradient"]


def _compacted(fn, xs, mask, res, chunk):
    """Runs `vmap(fn)` only on the rows of `xs` where `mask` holds, `chunk` at a time,
    and writes its outputs into `res` (a while loop outside vmap: real work skipping)."""
    n = xs.shape[0]
    order = jnp.argsort(~mask, stable=True)
    m = jnp.sum(mask, dtype=jnp.int32)
    nchunks = (m + chunk - 1) // chunk
    padded = jnp.concatenate([order, jnp.full((chunk,), n, order.dtype)])

    def body(i, res):
        idx = jax.lax.dynamic_slice(padded, (i * chunk,), (chunk,))
        live = (i * chunk + jnp.arange(chunk, dtype=m.dtype)) < m
        idx = jnp.where(live, idx, n)
        new = jax.vmap(fn)(xs[jnp.minimum(idx, n - 1)])
        return {
            k: (
                res[k].at[idx].set(new[k].astype(res[k].dtype), mode="drop") if k in new else res[k]
            )
            for k in res
        }

    return jax.lax.fori_loop(0, nchunks, body, res)


@eqx.filter_jit
def _tie_counts(field: MinNormField, xs):
    return jax.vmap(field.needs_qp)(xs)


@eqx.filter_jit
def _vmapped(fn, xs):
    return jax.vmap(fn)(xs)


# Vectors of length d a row holds beyond its kinks' pieces (the point, gradients, the QP's
# small arrays): a margin, as the engine's lanes count theirs.
_VECTORS_PER_ROW = 16


def _run_rows(fn, xs, rows: np.ndarray, max_rows: int = 512) -> dict:
    """`vmap(fn)` on `xs[rows]`, at most `max_rows` per call, padded to a few bucket sizes
    (8, 64, 512 per call, and `max_rows`) so that varying counts reuse compiled programs."""
    buckets = sorted({b for b in (8, 64, 512) if b < max_rows} | {max_rows})
    outs = []
    for start in range(0, len(rows), max_rows):
        part = rows[start : start + max_rows]
        size = next(b for b in buckets if b >= len(part))
        padded = np.concatenate([part, np.full(size - len(part), part[0])])
        out = _vmapped(fn, xs[jnp.asarray(padded)])
        # Outputs may be pytrees (a pass's selection is a tuple of arrays): leaf by leaf.
        outs.append(jax.tree.map(lambda a, k=len(part): np.asarray(a)[:k], out))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def _rows_per_call(field: MinNormField, xs) -> int:
    """Rows of one batched call: 512, or fewer (a power of two, at least 8) when their
    working memory, counted per row as the engine counts a lane's (the kinks' pieces,
    `MinNormField.vectors_per_lane`, in float64 vectors of length d), would exceed
    `jaxflow._memory.lane_memory_budget`. Without the cap, 640 points of a ReLU network
    with d = 865 and 48,000 kinks asked for 26 GiB at once (~51 MB a row)."""
    d = int(xs.shape[-1])
    per_row = (_VECTORS_PER_ROW + int(field.vectors_per_lane())) * d * 8
    fit = lane_memory_budget(jax.default_backend()) // max(per_row, 1)
    return int(min(512, max(8, 2 ** int(np.log2(max(fit, 1))))))


class _TracedStages:
    """Stages inside one traced program: every stage is compiled, and runs (a
    `fori_loop` of `chunk` points) only on the points its mask selects."""

    xp = jnp

    def __init__(self, chunk: int):
        self.chunk = chunk

    def tie_counts(self, field: MinNormField, xs):
        return jax.vmap(field.needs_qp)(xs)

    def run(self, fn, xs, mask, res: dict) -> dict:
        return _compacted(fn, xs, mask, res, self.chunk)


class _EagerStages:
    """Stages on concrete arrays: a stage is compiled and run only when some point needs
    it, on those rows only, at most `max_rows` at a time."""

    xp = np

    def __init__(self, max_rows: int = 512):
        self.max_rows = max_rows

    def tie_counts(self, field: MinNormField, xs):
        return tuple(np.array(a) for a in _tie_counts(field, xs))

    def run(self, fn, xs, mask, res: dict) -> dict:
        rows = np.nonzero(mask)[0]
        if rows.size:
            out = _run_rows(fn, xs, rows, self.max_rows)
            for key in res:
                if key in out:
                    res[key][rows] = out[key]
        return res


def _tiers(field: MinNormField, dtype) -> list[int]:
    """Slot counts compiled for the batched path: a few small ones below the full count
    so that points with few tied kinks solve a small QP."""
    prog = field.program(dtype)
    if prog is None or prog is NO_KINKS or prog.nested:
        return [0]
    full = min(prog.n_groups, field.options.max_active)
    return sorted({t for t in (8, 32) if 2 * t <= full} | {full})


def _drive(field: MinNormField, xs, stages) -> dict:
    """The tier driver: the cheap pass everywhere, then the QP tiers and the
    realisability test where needed; `stages` says how each stage is run."""
    xp = stages.xp
    n = xs.shape[0]
    f, g, count = stages.tie_counts(field, xs)
    res = dict(
        v=g,
        f=f,
        gap=xp.zeros((n,), g.dtype),
        exactness=xp.full((n,), int(Exactness.SMOOTH), xp.int8),
        n_active=xp.zeros((n,), xp.int32),
        wants_realisability=xp.zeros((n,), bool),
    )
    # Only points with a tied kink need the QP, sized by how many kinks are tied, and
    # only those without a certificate the (costlier) realisability test.
    tiers = _tiers(field, xs.dtype)
    lo = 0
    for k in tiers:
        last = k == tiers[-1]
        fld = field if last else field.with_options(max_active=k)
        mask = (count > lo) & ((count <= k) | last)
        res = stages.run(fld.certificate_pass, xs, mask, res)
        lo = k
    res = stages.run(field.realisability_pass, xs, res.pop("wants_realisability"), res)
    res["error_bound"] = xp.sqrt(2 * xp.maximum(res["gap"], 0.0))
    return res


@eqx.filter_jit
def _traced(field: MinNormField, xs, chunk: int) -> dict:
    return _drive(field, xs, _TracedStages(chunk))


def _eager(field: MinNormField, xs) -> dict:
    stages = _EagerStages(_rows_per_call(field, xs))
    return {k: jnp.asarray(v) for k, v in _drive(field, xs, stages).items()}


def minnorm_subgradient(problem, x, **options) -> MinNormResult:
    r"""The minimal-norm element $v$ of $\partial f(x)$, with a certificate.

    **Arguments:**

    - `problem`: a `jaxflow.Problem` (smooth or not; its kinks are found in `f`).
    - `x`: one point (flat `(d,)` or a pytree like `problem.example`) or a batch
      (`(n, d)` or a pytree with a leading axis); float32 or float64.
    - `**options`: `MinNormOptions` fields (e.g. `fallback="bundle"`, `band_ulps`).

    **Returns:** a `MinNormResult` (`v`, `f`, `gap`, `error_bound` $\ge \|v - v^*\|$,
    `exactness`, `n_active`; `stationarity` $= \|v\|$), batched like `x`. Points with no
    tied kink cost one interpreted gradient; only the others run the QP (sized by the
    number of tied kinks), and only uncertified ones the realisability test. Called on
    concrete arrays it compiles only the stages some point needs; inside `jit`/`vmap` it
    is one traced program with fixed budgets.
    """
    if not isinstance(problem, Problem):
        raise TypeError(
            f"minnorm_subgradient: `problem` must be a jaxflow.Problem, got "
            f"{type(problem).__name__}."
        )
    field = minnorm_field_of(problem, MinNormOptions(**options))
    single = False
    leaves = jax.tree_util.tree_leaves(x)
    if len(leaves) == 1 and jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(0):
        arr = jnp.asarray(leaves[0])
        if arr.ndim == 1 and arr.shape[0] == problem.dim and problem.dim != 1:
            single, xs = True, arr[None]
        elif arr.ndim == 0 and problem.dim == 1:
            single, xs = True, arr.reshape(1, 1)
        else:
            xs = problem.flatten_batch(arr, what="x")
    else:
        try:
            xs = problem.flatten_batch(x, what="x")
        except ValueError:
            xs = problem.ravel(x)[None]
            single = True
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"minnorm_subgradient: x has dtype {xs.dtype}; pass floating point.")
    n = int(xs.shape[0])
    if isinstance(xs, jax.core.Tracer):  # inside jit / vmap: one traced program
        out = _traced(field, xs, min(n, 512))
    else:  # eager: compile and run only the stages some point needs
        out = _eager(field, xs)
    res = MinNormResult(**out)
    if single:
        res = jax.tree.map(lambda a: a[0], res)
    return res
