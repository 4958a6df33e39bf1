"""How much memory batched work may take: a quarter of the device's (of the host's on CPU).

Shared by the engine's lane counts (`jaxflow._engine.default_lanes`) and the batched
minimal-norm subgradient (`jaxflow.minnorm_subgradient`), which size their batches by it.
"""

from __future__ import annotations

import os

import jax

__all__ = ["lane_memory_budget"]


def lane_memory_budget(backend: str) -> int:
    """Bytes the lanes' working memory may take: a quarter of the device's memory (of the
    host's on CPU), at least 256 MiB."""
    total = None
    if backend != "cpu":
        try:
            total = jax.devices()[0].memory_stats()["bytes_limit"]
        except Exception:  # noqa: BLE001 - not every backend reports its memory
            total = None
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 8 * 2**30
    return max(total // 4, 2**28)
