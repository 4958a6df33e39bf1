"""The errors of scans and their stores.

All derive from `jaxflow.JaxflowError` and, so that existing `except RuntimeError`
handlers keep working, from `RuntimeError`.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import JaxflowError, StoreError, UnsafePathError

__all__ = ["ScanError", "StoreError", "SpecMismatchError", "ScanLockedError",
           "ChunkCorruptedError", "StoreIntegrityError", "UnsafePathError",
           "ChunkWriteError"]


class ScanError(JaxflowError, RuntimeError):
    """A chunk could not be computed (its worker raised, or crashed too often)."""


class SpecMismatchError(StoreError):
    """`out/` holds a scan with a different spec; nothing was modified.

    `differences` lists `(field, stored value, requested value)`.
    """

    def __init__(self, out, differences: list[tuple[str, Any, Any]]):
        self.out = str(out)
        self.differences = differences
        lines = [
            f"  {name}: stored {_short(old)}, requested {_short(new)}"
            for name, old, new in differences
        ]
        super().__init__(
            f"{out} holds a different scan; refusing to mix results (nothing was modified).\n"
            "Differing fields:\n" + "\n".join(lines) + "\n"
            "Use another output directory, or rerun with the stored settings to resume."
        )


class ScanLockedError(StoreError):
    """Another process is writing the same `out/`."""


class StoreIntegrityError(StoreError):
    """A store's files disagree with each other: the manifest with its own hash, the
    journal with the layout, a chunk with the manifest. Names the file and the field.

    `file` is the store-relative path of the offending file, `field` the field.
    """

    def __init__(self, out, file: str, field: str, why: str):
        self.out = str(out)
        self.file = file
        self.field = field
        super().__init__(
            f"{out}: {file}: `{field}` {why}; the store is damaged or was edited, refusing to "
            "use it."
        )


class ChunkCorruptedError(StoreIntegrityError):
    """A journalled chunk file is missing, truncated, does not match its hash, or its
    Parquet metadata, rows or journal line disagree with the manifest."""

    def __init__(self, out, chunks: list[int], why: str = ""):
        self.out = str(out)
        self.chunks = list(chunks)
        shown = ", ".join(map(str, self.chunks[:10])) + (" ..." if len(self.chunks) > 10 else "")
        self.file, self.field = "chunks", why
        StoreError.__init__(
            self,
            f"{out}: chunk file(s) {shown} are missing or corrupted{': ' + why if why else ''}. "
            "Rerun the same scan to recompute them."
        )


class ChunkWriteError(ScanError):
    """A computed chunk could not be written (disk full, I/O error). The store stays
    consistent: the chunk has no journal line and is recomputed when the scan is rerun."""


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 120 else s[:117] + "..."
