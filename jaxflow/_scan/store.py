r"""The on-disk store of a scan: manifest, one Parquet file per chunk, a journal, a lock.

Layout of `out/`:

```
out/
  manifest.json            spec, SHA-256 of its canonical JSON, versions, dtype, PRNG, x64
  journal.jsonl            one line per finished chunk: id, rows, file SHA-256, counts
  .lock                    held by the one process writing the store (filelock)
  chunks/chunk-000000.parquet ...        per-trajectory table of chunk i (plain Parquet)
  trajectories/chunk-000000.parquet ...  checkpoint series of the saved subsample
```

Crash safety. Every file is written to a dot-prefixed temporary name in its final
directory, flushed and `fsync`ed, renamed over the final name with `os.replace`
(atomic on POSIX), and the directory is `fsync`ed. Only then is a journal line
appended and `fsync`ed. A chunk counts as finished only if it has a journal entry,
its file exists, its SHA-256 matches the journal and it parses as Parquet with the
journalled number of rows; anything else is recomputed. Readers (pyarrow datasets,
polars, DuckDB) skip the dot-prefixed temporary files, so they never see a
half-written chunk. Only the driver process writes; workers return tables.

No pickle anywhere: JSON and Parquet only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._schema import column_to_numpy as column_to_numpy

from .._json import canonical_json
from .errors import ChunkCorruptedError, ScanLockedError, SpecMismatchError, StoreError

__all__ = [
    "Store",
    "StoreError",
    "SpecMismatchError",
    "ScanLockedError",
    "ChunkCorruptedError",
    "canonical_json",
    "spec_sha256",
    "FORMAT",
    "FORMAT_VERSION",
]

FORMAT = "jaxflow-scan"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
JOURNAL = "journal.jsonl"
LOCK = ".lock"
WRITER = ".writer.json"
CHUNKS = "chunks"
TRAJECTORIES = "trajectories"


# --------------------------------------------------------------------------- helpers
def spec_sha256(spec: Mapping) -> str:
    """SHA-256 of the canonical JSON of a spec."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable. Not every platform can open a directory (Windows).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` is either the old file or the whole new one.

    The temporary name starts with a dot so dataset readers ignore it.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def diff_specs(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Fields (dotted paths) where two JSON-like specs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append((name, None, new[k]))
            elif k not in new:
                out.append((name, old[k], None))
            else:
                out.extend(diff_specs(old[k], new[k], name))
        return out
    if old != new:
        return [(prefix or "<root>", old, new)]
    return []


def table_to_parquet_bytes(table: pa.Table, metadata: Mapping[str, str] | None = None) -> bytes:
    """Parquet bytes of `table` (zstd; schema metadata records the chunk's identity)."""
    if metadata:
        md = dict(table.schema.metadata or {})
        md.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(md)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def columns_to_table(columns: Mapping[str, np.ndarray]) -> pa.Table:
    """A dict of numpy columns -> Arrow table; 2-D columns become fixed-size lists."""
    arrays, names = [], []
    for name, col in columns.items():
        col = np.asarray(col)
        if col.ndim == 1:
            arrays.append(pa.array(col))
        elif col.ndim == 2:
            flat = pa.array(np.ascontiguousarray(col).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, col.shape[1]))
        else:
            raise ValueError(f"column {name!r} has {col.ndim} dimensions; store 1-D or 2-D columns.")
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


# --------------------------------------------------------------------------- the store
class Store:
    """A scan's output directory. Read-only unless `open_for_writing` was called."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None

    # -- paths ---------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def journal_path(self) -> Path:
        return self.path / JOURNAL

    @staticmethod
    def chunk_name(chunk: int) -> str:
        return f"chunk-{chunk:06d}.parquet"

    def chunk_path(self, chunk: int) -> Path:
        return self.path / CHUNKS / self.chunk_name(chunk)

    def trajectory_path(self, chunk: int) -> Path:
        return self.path / TRAJECTORIES / self.chunk_name(chunk)

    def exists(self) -> bool:
        return self.manifest_path.exists()

    # -- checks before any compute ----------------------------------------------------------
    @staticmethod
    def check_writable(path) -> None:
        """Raise a clear error now if `path` cannot become a scan directory."""
        path = Path(path)
        probe_dir = path
        while not probe_dir.exists():
            if probe_dir.parent == probe_dir:
                break
            probe_dir = probe_dir.parent
        if probe_dir.exists() and not probe_dir.is_dir():
            raise ValueError(
                f"out: {probe_dir} exists and is not a directory; choose another output directory."
            )
        if path.exists() and not path.is_dir():
            raise ValueError(f"out: {path} exists and is not a directory.")
        if not os.access(probe_dir, os.W_OK | os.X_OK):
            raise PermissionError(
                f"out: cannot write to {probe_dir} (permission denied); choose a writable "
                "output directory."
            )

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.manifest_path} is unreadable ({e}); not a jaxflow scan?") from e
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a jaxflow scan directory (format field missing).")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path} was written by store format {manifest.get('format_version')}, this "
                f"jaxflow reads format {FORMAT_VERSION}."
            )
        return manifest

    @staticmethod
    def make_manifest(spec: Mapping, environment: Mapping, extra: Mapping | None = None) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spec": dict(spec),
            "spec_sha256": spec_sha256(spec),
            "environment": dict(environment),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }

    def compare(self, manifest: Mapping, spec: Mapping, environment: Mapping) -> None:
        """Raise `SpecMismatchError` if the stored scan is not this one."""
        diffs = [("spec." + k, a, b) for k, a, b in diff_specs(manifest["spec"], dict(spec))]
        diffs += [
            ("environment." + k, a, b)
            for k, a, b in diff_specs(manifest.get("environment", {}), dict(environment))
        ]
        if diffs:
            raise SpecMismatchError(self.path, diffs)

    # -- writing ------------------------------------------------------------------------
    def open_for_writing(self, spec: Mapping, environment: Mapping, *, resume: bool,
                         extra: Mapping | None = None) -> dict:
        """Validate against an existing manifest (refusing before touching anything), then
        take the lock and create the layout. Returns the manifest."""
        existing = self.read_manifest()
        if existing is not None:
            if not resume:
                raise StoreError(
                    f"{self.path} already holds a scan and resume=False; choose another output "
                    "directory or pass resume=True."
                )
            self.compare(existing, spec, environment)
        elif self.path.exists() and any(
            p.name not in (LOCK, WRITER) for p in self.path.iterdir()
        ):
            raise StoreError(
                f"{self.path} exists, is not empty and has no {MANIFEST}; refusing to write a scan "
                "into it. Choose a new or empty output directory."
            )
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            # Re-read under the lock: another writer may have created it meanwhile.
            existing = self.read_manifest()
            if existing is not None:
                self.compare(existing, spec, environment)
                manifest = existing
            else:
                manifest = self.make_manifest(spec, environment, extra)
                atomic_write_bytes(self.manifest_path,
                                   (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
            (self.path / CHUNKS).mkdir(exist_ok=True)
            (self.path / TRAJECTORIES).mkdir(exist_ok=True)
            _fsync_dir(self.path)
            self._repair_journal_tail()
            self.remove_orphans()
        except BaseException:
            self.release()
            raise
        return manifest

    def _acquire_lock(self) -> None:
        import filelock

        lock = filelock.FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                info = json.loads((self.path / WRITER).read_text())
                holder = f" (pid {info.get('pid')} on {info.get('host')}, since {info.get('since')})"
            raise ScanLockedError(
                f"{self.path} is being written by another jaxflow process{holder}. Wait for it "
                "to finish, or use another output directory."
            ) from None
        self._lock = lock
        with contextlib.suppress(OSError):
            (self.path / WRITER).write_text(json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }))

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files left by a crash between write and rename."""
        removed = []
        for d in (self.path, self.path / CHUNKS, self.path / TRAJECTORIES):
            if not d.is_dir():
                continue
            for p in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
        return removed

    def _repair_journal_tail(self) -> None:
        # A crash while appending can leave a torn last line; cut it so the next
        # append starts on a fresh line (the chunk it described is recomputed).
        jp = self.journal_path
        if not jp.exists():
            return
        data = jp.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with open(jp, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())

    def write_chunk(self, chunk: int, table: pa.Table, trajectories: pa.Table | None,
                    *, spec_hash: str, info: Mapping | None = None) -> dict:
        """Write chunk `chunk` atomically, then journal it. Returns the journal entry."""
        if self._lock is None:
            raise StoreError("write_chunk: the store is not open for writing.")
        md = {"jaxflow.spec_sha256": spec_hash, "jaxflow.chunk": str(chunk)}
        entry: dict[str, Any] = {"chunk": int(chunk), "rows": int(table.num_rows)}
        data = table_to_parquet_bytes(table, md)
        atomic_write_bytes(self.chunk_path(chunk), data)
        entry["file"] = f"{CHUNKS}/{self.chunk_name(chunk)}"
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["bytes"] = len(data)
        if trajectories is not None and trajectories.num_rows:
            tdata = table_to_parquet_bytes(trajectories, md)
            atomic_write_bytes(self.trajectory_path(chunk), tdata)
            entry["trajectories"] = {
                "file": f"{TRAJECTORIES}/{self.chunk_name(chunk)}",
                "sha256": hashlib.sha256(tdata).hexdigest(),
                "rows": int(trajectories.num_rows),
            }
        entry.update(info or {})
        entry["written"] = time.time()
        self._append_journal(entry)
        return entry

    def _append_journal(self, entry: Mapping) -> None:
        line = (json.dumps(entry, sort_keys=True, allow_nan=True) + "\n").encode()
        new = not self.journal_path.exists()
        with open(self.journal_path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            _fsync_dir(self.path)

    # -- reading ------------------------------------------------------------------------
    def read_journal(self) -> dict[int, dict]:
        """Journal entries by chunk id (the last entry of a chunk wins; torn lines skipped)."""
        entries: dict[int, dict] = {}
        if not self.journal_path.exists():
            return entries
        with open(self.journal_path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break
                try:
                    e = json.loads(raw)
                    entries[int(e["chunk"])] = e
                except (ValueError, KeyError, TypeError):
                    continue
        return entries

    def _file_ok(self, rel: str, sha: str, rows: int) -> bool:
        p = self.path / rel
        try:
            data = p.read_bytes()
        except OSError:
            return False
        if hashlib.sha256(data).hexdigest() != sha:
            return False
        try:
            return pq.read_metadata(pa.BufferReader(data)).num_rows == rows
        except (pa.ArrowException, OSError, ValueError):
            return False

    def verify(self, entry: Mapping) -> bool:
        """Is this journalled chunk intact (file present, hash equal, parses, row count)?"""
        if not self._file_ok(entry["file"], entry["sha256"], entry["rows"]):
            return False
        t = entry.get("trajectories")
        return t is None or self._file_ok(t["file"], t["sha256"], t["rows"])

    def finished_chunks(self, n_chunks: int) -> tuple[dict[int, dict], list[int]]:
        """(intact journalled chunks, ids of journalled chunks that failed verification)."""
        good, bad = {}, []
        for chunk, e in sorted(self.read_journal().items()):
            if not 0 <= chunk < n_chunks:
                continue
            if self.verify(e):
                good[chunk] = e
            else:
                bad.append(chunk)
        return good, bad

    def read_table(self, chunks: list[int], *, columns: list[str] | None = None) -> pa.Table:
        tables = [pq.read_table(self.chunk_path(c), columns=columns) for c in chunks]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables).replace_schema_metadata(None)

    def read_trajectories(self, entries: Mapping[int, Mapping]) -> pa.Table | None:
        paths = [self.path / e["trajectories"]["file"] for _, e in sorted(entries.items())
                 if e.get("trajectories")]
        if not paths:
            return None
        return pa.concat_tables([pq.read_table(p) for p in paths]).replace_schema_metadata(None)
