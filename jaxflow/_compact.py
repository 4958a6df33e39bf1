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

__all__ = ["compact", "blocks"]


def compact(mask):
    """The positions where `mask` holds, first (`order`), their number, and each
    position's rank among them (`slot`)."""
    n = mask.shape[0]
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
