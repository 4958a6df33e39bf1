"""Compaction: run a vmapped function only on the rows of a batch that need it.

Under `vmap` every row pays for every branch; a `while_loop` outside the vmap can skip
work instead. The rows that need a stage are gathered to the front (`compact`) and
processed a fixed number at a time (`blocks`), so that the cost follows the number of
rows that need it. A row's arithmetic in a block does not depend on the other rows of
the block as long as the block size is fixed (XLA:CPU compiles a program per shape and
vectorises along the batch the same way for every row of it); callers keep it fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["compact", "blocks", "on_rows", "block_size", "MIN_BLOCK"]

# Fewest rows of a block: the engine's fewest lanes (`MIN_LANES`), below which XLA:CPU
# vectorises a batch differently (a row's rounding would depend on its block).
MIN_BLOCK = 16


def compact(mask, key=None):
    """The positions where `mask` holds, first (`order`), their number, and each
    position's rank among them (`slot`). With an integer `key` per position they come in
    ascending order of it (ties in order of position), otherwise in order of position."""
    n = mask.shape[0]
    if key is not None:
        ranked = jnp.where(mask, key.astype(jnp.int32), jnp.iinfo(jnp.int32).max)
        order = jnp.argsort(ranked, stable=True).astype(jnp.int32)
        slot = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        return order, jnp.sum(mask, dtype=jnp.int32), slot
    slot = jnp.cumsum(mask) - 1
    order = jnp.zeros(n, jnp.int32).at[jnp.where(mask, slot, n)].set(
        jnp.arange(n, dtype=jnp.int32), mode="drop"
    )
    return order, slot[-1] + 1, slot


def blocks(fn, inputs_at, count, n: int, size: int):
    """`fn(*inputs_at(k))` for the compacted positions `k < count`, `size` at a time;
    outputs in compacted order, written in place (entries from `count` on are junk)."""
    shapes = jax.eval_shape(lambda k: fn(*inputs_at(k)), jnp.zeros(size, jnp.int32))
    # `size` spare rows: a block that starts near the end is written whole, not shifted.
    out = jax.tree.map(lambda s: jnp.zeros((n + size,) + s.shape[1:], s.dtype), shapes)

    def body(carry):
        i, out = carry
        block = fn(*inputs_at(jnp.clip(i * size + jnp.arange(size), 0, n - 1)))
        out = jax.tree.map(
            lambda o, b: jax.lax.dynamic_update_slice_in_dim(o, b, i * size, axis=0), out, block
        )
        return i + 1, out

    out = jax.lax.while_loop(lambda c: c[0] * size < count, body, (0, out))[1]
    return jax.tree.map(lambda o: o[:n], out)


def block_size(rows: int) -> int:
    """Rows of a block for a batch of `rows`: a quarter of them in whole multiples of
    `MIN_BLOCK` (at least one block): few blocks when most rows need the work, little
    padding when few do."""
    return max(MIN_BLOCK, rows // 4 // MIN_BLOCK * MIN_BLOCK)


def on_rows(fn, args, need, fallback, *, whole_pass: bool = True, cost=None):
    """`vmap(fn)(*args)` where `need` holds and `fallback` elsewhere, computing `fn` only
    on the rows that need it (in blocks of `block_size`, or, with `whole_pass`, in one
    pass over all rows when more than half need it, which then costs less than the blocks
    but puts a second copy of `fn` in the program; not at all when none does). Batches of
    fewer than `MIN_BLOCK` rows are computed whole. `cost`: an integer per row that
    predicts its work when `fn` loops until every row of a block is done; rows of like
    cost are then blocked together, so that cheap rows do not wait for dear ones."""
    n = need.shape[0]
    solve = jax.vmap(fn)

    def pick(new, old, back):
        keep = need.reshape(need.shape + (1,) * (old.ndim - 1))
        return jnp.where(keep, new if back is None else new[back], old)

    if n < MIN_BLOCK:
        return jax.tree.map(lambda a, b: pick(a, b, None), solve(*args), fallback)
    order, count, slot = compact(need, cost)

    def at(k):
        rows = order[k]
        return tuple(a[rows] for a in args)

    def compacted():
        return blocks(solve, at, count, n, block_size(n)), jnp.clip(slot, 0, n - 1).astype(jnp.int32)

    def every_row():
        return solve(*args), jnp.arange(n, dtype=jnp.int32)

    def some_rows():
        if whole_pass:
            out, back = jax.lax.cond(count > n // 2, every_row, compacted)
        else:
            out, back = compacted()
        return jax.tree.map(lambda a, b: pick(a, b, back), out, fallback)

    return jax.lax.cond(count > 0, some_rows, lambda: fallback)
