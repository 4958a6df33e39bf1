r"""A stored scan's report data: streamed summaries and the stored critical-point types.

The report of a scan is built without reading its table into memory: the summary
columns (`jaxflow._summaries.SUMMARY_COLUMNS`) of each stored chunk are read in chunk
order, summarised and merged (`TableSummary`), so the driver's memory is one chunk plus
the summary, whatever $N$. The representatives' final points are then read back by row.

Typing critical points needs the problem (Hessians, perturbation tests). The driver of a
scan has it, types the representatives after the last chunk and records the types as
data in `out/summary.json`, tied to the manifest's `spec_sha256` and to the SHA-256 of
the journalled chunk hashes it was computed from, and carrying the SHA-256 of its own
canonical JSON. Opening a store reads these types; it never imports or calls anything
the store names (a problem is rebuilt only when the caller passes one, or for a
built-in whose parameters pass `references.bounded_builtin`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import pyarrow.parquet as pq

from .._json import canonical_json, float_from_json
from .._schema import final_column
from .._summaries import SUMMARY_COLUMNS, TableSummary
from .store import Store, atomic_write_bytes

__all__ = ["summarize", "store_points", "read_typing", "write_typing", "SUMMARY"]

SUMMARY = "summary.json"
_FORMAT = "jaxflow-scan-summary"


def _chunk_columns(store: Store, chunk: int, wanted) -> dict[str, np.ndarray]:
    path = store.chunk_path(chunk)
    names = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in wanted if c in names])
    return {name: table.column(name).to_numpy() for name in table.column_names}


def summarize(store: Store, manifest: Mapping, chunks, *, n_probe: int = 4) -> TableSummary | None:
    """The merged `TableSummary` of the stored `chunks` (ascending), one chunk in memory
    at a time; `None` when they hold no rows."""
    spec = manifest["spec"]
    gtol = float_from_json(spec["flow"]["gtol"])
    summary = None
    dim = int(spec["problem"].get("dim", 0))
    for c in sorted(chunks):
        cols = _chunk_columns(store, c, SUMMARY_COLUMNS + (final_column(0),))
        if not cols or cols["status"].size == 0:
            continue
        part = TableSummary.from_table(cols, gtol=gtol, n_probe=n_probe,
                                       row_offset=c * spec["chunk_size"])
        part.dim = dim if final_column(0) in cols else 0
        summary = part if summary is None else summary.merge(part)
    return summary


def store_points(store: Store, manifest: Mapping):
    """`points_of(rows)`: the final points of global rows, read from their chunk files."""
    spec = manifest["spec"]
    cs, dim = int(spec["chunk_size"]), int(spec["problem"]["dim"])

    def points_of(rows):
        rows = np.asarray(rows, np.int64)
        out = None
        for c in np.unique(rows // cs):
            cols = _chunk_columns(store, int(c), tuple(final_column(j) for j in range(dim)))
            if len(cols) < dim:
                return None
            sel = rows // cs == c
            pts = np.stack([cols[final_column(j)][rows[sel] - c * cs] for j in range(dim)], -1)
            if out is None:
                out = np.empty((rows.size, dim), pts.dtype)
            out[sel] = pts
        return out

    return points_of


def _chunks_sha256(entries: Mapping[int, Mapping]) -> str:
    h = hashlib.sha256()
    for c in sorted(entries):
        h.update(f"{c}:{entries[c].get('sha256')}\n".encode())
    return h.hexdigest()


def write_typing(store: Store, manifest: Mapping, entries: Mapping[int, Mapping],
                 record: list[dict]) -> None:
    """Stores the critical-point types of the report of `entries` in `out/summary.json`."""
    body = {
        "format": _FORMAT,
        "spec_sha256": manifest["spec_sha256"],
        "chunks_sha256": _chunks_sha256(entries),
        "critical_types": record,
    }
    data = dict(body, sha256=hashlib.sha256(canonical_json(body).encode()).hexdigest())
    atomic_write_bytes(store.path / SUMMARY,
                       (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def read_typing(store: Store, manifest: Mapping, entries: Mapping[int, Mapping]):
    """The stored critical-point types for exactly these chunks, or `None`.

    A `summary.json` of other chunks (a scan resumed since, or an interrupted driver) or of
    another spec is ignored; one whose content does not match its own hash is ignored too
    (its types are then recomputed only if the caller gives the problem).
    """
    path = store.path / SUMMARY
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text())
        body = {k: v for k, v in data.items() if k != "sha256"}
        ok = (
            data.get("format") == _FORMAT
            and data.get("sha256") == hashlib.sha256(canonical_json(body).encode()).hexdigest()
            and data.get("spec_sha256") == manifest["spec_sha256"]
            and data.get("chunks_sha256") == _chunks_sha256(entries)
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return data["critical_types"] if ok else None
