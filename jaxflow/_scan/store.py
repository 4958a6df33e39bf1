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

Crash safety. Every file is written by `jaxflow._files.write_bytes`: a dot-prefixed
temporary name in its final directory, flushed and `fsync`ed, renamed over the final name
with `os.replace` (atomic on POSIX), and the directory is `fsync`ed. Only then is a
journal line appended and `fsync`ed. Readers (pyarrow datasets, polars, DuckDB) skip the
dot-prefixed temporary files, so they never see a half-written chunk. Only the driver
process writes; workers return tables. A write that fails (disk full) raises
`ChunkWriteError` and leaves the store consistent: the chunk has no journal line.

Containment. No write follows a symbolic link: a link anywhere in the store's layout
(`manifest.json`, `journal.jsonl`, `.lock`, `.writer.json`, `chunks/`, `trajectories/`,
`report/` or a file in them) is refused with `UnsafePathError` before anything is
written, and every file is created without following links (`jaxflow._files`).

Integrity, checked on every open (resume, `load`, `report`):

- the manifest's `spec_sha256` is the hash of its `spec`, and `n_chunks`, `n`,
  `chunk_size`, `seed` are integers with `n_chunks = ceil(n / chunk_size)`; otherwise
  `StoreIntegrityError` naming `manifest.json` and the field, whatever the caller;
- a journal line must name its chunk, the exact file of that chunk
  (`chunks/chunk-000003.parquet` for chunk 3; never `..` or an absolute path), the file's
  SHA-256 and the chunk's row count, with the right types;
- a chunk counts as finished only if its file is a regular file whose SHA-256 matches the
  journal, it parses as Parquet, its metadata names the manifest's spec hash and its own
  chunk index, and its rows are those of (n, chunk_size, chunk); the same for its saved
  trajectories.

A chunk that fails these checks is never read: `load` and `report` refuse the store
(`ChunkCorruptedError`, naming the file and the field), a resumed scan recomputes the
chunk from the verified spec (its file is replaced), so a store never mixes scans.

No pickle anywhere: JSON and Parquet only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .._files import (
    append_bytes,
    check_no_symlink,
    make_dirs,
    read_bytes,
    truncate,
    write_bytes,
)
from .._json import canonical_json
from .._schema import column_to_numpy as column_to_numpy
from .errors import (
    ChunkCorruptedError,
    ChunkWriteError,
    ScanLockedError,
    SpecMismatchError,
    StoreError,
    StoreIntegrityError,
)

__all__ = [
    "Store",
    "StoreError",
    "SpecMismatchError",
    "ScanLockedError",
    "ChunkCorruptedError",
    "StoreIntegrityError",
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
REPORT = "report"


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
    """Write `data` to `path` so that `path` is either the old file or the whole new one
    (`jaxflow._files.write_bytes`: no symlink is followed; the temporary name starts with a
    dot so dataset readers ignore it)."""
    path = Path(path)
    write_bytes(path.parent, path.name, data)


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


# --------------------------------------------------------------------------- checks
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_spec_shape(out, spec: Mapping) -> None:
    """The fields of a stored spec the layout depends on: integers that agree."""
    for name, minimum in (("n", 1), ("chunk_size", 1), ("n_chunks", 1), ("seed", 0),
                          ("save_trajectories", 0)):
        v = spec.get(name)
        if not (_is_int(v) and v >= minimum):
            raise StoreIntegrityError(out, MANIFEST, f"spec.{name}",
                                      f"must be an integer >= {minimum}, found {v!r}")
    expected = -(-spec["n"] // spec["chunk_size"])
    if spec["n_chunks"] != expected:
        raise StoreIntegrityError(
            out, MANIFEST, "spec.n_chunks",
            f"is {spec['n_chunks']} but n = {spec['n']} in chunks of {spec['chunk_size']} "
            f"make {expected}",
        )


def chunk_rows(spec: Mapping, chunk: int) -> int:
    """Rows of chunk `chunk` of a scan: `chunk_size`, less in the last chunk."""
    cs = spec["chunk_size"]
    return max(0, min(cs, spec["n"] - chunk * cs))


def trajectory_rows(spec: Mapping, chunk: int) -> int:
    """Saved trajectories of chunk `chunk`: its starts with index below `save_trajectories`."""
    first = chunk * spec["chunk_size"]
    return max(0, min(chunk_rows(spec, chunk), spec["save_trajectories"] - first))


# --------------------------------------------------------------------------- the store
class Store:
    """A scan's output directory. Read-only unless `open_for_writing` was called.

    `manifest` is the verified manifest once `read_manifest` (or `open_for_writing`) ran;
    `problems` maps the chunks that failed verification to the reason (file and field).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None
        self.manifest: dict | None = None
        self.problems: dict[int, str] = {}
        self._journal_errors: list[tuple[int, str, str]] = []
        self._lines: dict[int, int] = {}

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

    @classmethod
    def chunk_file(cls, chunk: int) -> str:
        """The store-relative path of chunk `chunk`'s table (the journal's `file`)."""
        return f"{CHUNKS}/{cls.chunk_name(chunk)}"

    @classmethod
    def trajectory_file(cls, chunk: int) -> str:
        """The store-relative path of chunk `chunk`'s saved trajectories."""
        return f"{TRAJECTORIES}/{cls.chunk_name(chunk)}"

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
        if path.is_symlink() and not path.exists():
            raise ValueError(
                f"out: {path} is a symbolic link to nothing ({os.readlink(path)}); remove it "
                "or choose another output directory."
            )
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

    def check_links(self) -> None:
        """Refuse symbolic links in the store's layout (`UnsafePathError`), before any write."""
        for name in (MANIFEST, JOURNAL, LOCK, WRITER, CHUNKS, TRAJECTORIES, REPORT):
            check_no_symlink(self.path / name)
        for d in (CHUNKS, TRAJECTORIES, REPORT):
            if (self.path / d).is_dir():
                for p in (self.path / d).iterdir():
                    check_no_symlink(p)

    def read_manifest(self) -> dict | None:
        """The manifest, verified (format, its own hash, the layout fields); None if absent."""
        if not self.manifest_path.exists() and not self.manifest_path.is_symlink():
            return None
        try:
            manifest = json.loads(read_bytes(self.path, MANIFEST))
        except (OSError, ValueError) as e:
            raise StoreError(
                f"{self.manifest_path} is unreadable ({e}); not a jaxflow scan?"
            ) from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise StoreError(f"{self.path} is not a jaxflow scan directory (format field missing).")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path} was written by store format {manifest.get('format_version')!r}, "
                f"this jaxflow reads format {FORMAT_VERSION}."
            )
        self.verify_manifest(manifest)
        self.manifest = manifest
        return manifest

    def verify_manifest(self, manifest: Mapping) -> None:
        """`StoreIntegrityError` unless `spec_sha256` is the hash of `spec` and the layout
        fields of the spec are integers that agree."""
        spec = manifest.get("spec")
        if not isinstance(spec, dict):
            raise StoreIntegrityError(self.path, MANIFEST, "spec",
                                      "is missing" if spec is None else "must be an object")
        stored = manifest.get("spec_sha256")
        try:
            actual = spec_sha256(spec)
        except (TypeError, ValueError) as e:
            raise StoreIntegrityError(self.path, MANIFEST, "spec",
                                      f"is not canonical JSON ({e})") from None
        if stored != actual:
            raise StoreIntegrityError(
                self.path, MANIFEST, "spec_sha256",
                f"is {stored!r} but the stored spec hashes to {actual!r} (the spec was edited)",
            )
        _check_spec_shape(self.path, spec)
        self._check_checkpoint_times(manifest)

    def _check_checkpoint_times(self, manifest: Mapping) -> None:
        # Stored beside the spec (outside its hash) but implied by it: the report indexes
        # the checkpoint series with them.
        if "checkpoint_times" not in manifest:
            return
        from .._json import float_from_json
        from .._options import checkpoint_times

        try:
            fs = manifest["spec"]["flow"]
            t_first = float_from_json(fs["t_first"])
            expected = checkpoint_times(float_from_json(fs["t1"]),
                                        per_decade=fs["checkpoints_per_decade"], t_first=t_first)
            ok = np.array_equal(np.asarray(manifest["checkpoint_times"], np.float64), expected)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise StoreIntegrityError(self.path, MANIFEST, "checkpoint_times",
                                      "does not match the spec's flow.t1, t_first and "
                                      "checkpoints_per_decade")

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
        env = manifest.get("environment", {})
        diffs += [
            ("environment." + k, a, b)
            for k, a, b in diff_specs(env if isinstance(env, dict) else {}, dict(environment))
        ]
        if diffs:
            raise SpecMismatchError(self.path, diffs)

    # -- writing ------------------------------------------------------------------------
    def open_for_writing(self, spec: Mapping, environment: Mapping, *, resume: bool,
                         extra: Mapping | None = None) -> dict:
        """Validate against an existing manifest (refusing before touching anything), then
        take the lock and create the layout. Returns the manifest."""
        self.check_links()
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
            self.check_links()
            existing = self.read_manifest()
            if existing is not None:
                self.compare(existing, spec, environment)
                manifest = existing
            else:
                manifest = self.make_manifest(spec, environment, extra)
                write_bytes(self.path, MANIFEST,
                                   (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
                self.manifest = manifest
            make_dirs(self.path, CHUNKS)
            make_dirs(self.path, TRAJECTORIES)
            _fsync_dir(self.path)
            self._repair_journal_tail()
            self.remove_orphans()
        except BaseException:
            self.release()
            raise
        return manifest

    def _acquire_lock(self) -> None:
        import filelock

        # filelock opens the lock file with O_TRUNC: create it here without following a
        # link, so that it never truncates a file elsewhere.
        append_bytes(self.path, LOCK, b"")
        lock = filelock.FileLock(str(self.path / LOCK))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            holder = ""
            with contextlib.suppress(OSError, ValueError, StoreError, AttributeError):
                info = json.loads(read_bytes(self.path, WRITER))
                holder = (f" (pid {info.get('pid')} on {info.get('host')}, "
                          f"since {info.get('since')})")
            raise ScanLockedError(
                f"{self.path} is being written by another jaxflow process{holder}. Wait for it "
                "to finish, or use another output directory."
            ) from None
        self._lock = lock
        try:
            write_bytes(self.path, WRITER, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }).encode())
        except OSError:
            pass  # the holder's description is a courtesy (a full disk must not stop here)
        except BaseException:
            self.release()
            raise

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
            if not d.is_dir() or d.is_symlink():
                continue
            for p in d.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()  # unlinks a link itself, never its target
                    removed.append(p)
        return removed

    def _repair_journal_tail(self) -> None:
        # A crash while appending can leave a torn last line; cut it so the next
        # append starts on a fresh line (the chunk it described is recomputed).
        if not self.journal_path.exists():
            return
        data = read_bytes(self.path, JOURNAL)
        if data and not data.endswith(b"\n"):
            truncate(self.path, JOURNAL, data.rfind(b"\n") + 1)

    def write_chunk(self, chunk: int, table: pa.Table, trajectories: pa.Table | None,
                    *, spec_hash: str, info: Mapping | None = None) -> dict:
        """Write chunk `chunk` atomically, then journal it. Returns the journal entry.

        A failed write (disk full, I/O error) raises `ChunkWriteError`; the chunk then has
        no journal line, so the store stays consistent and a rerun recomputes it.
        """
        if self._lock is None:
            raise StoreError("write_chunk: the store is not open for writing.")
        md = {"jaxflow.spec_sha256": spec_hash, "jaxflow.chunk": str(chunk)}
        entry: dict[str, Any] = {"chunk": int(chunk), "rows": int(table.num_rows)}
        try:
            data = table_to_parquet_bytes(table, md)
            write_bytes(self.path, self.chunk_file(chunk), data)
            entry["file"] = self.chunk_file(chunk)
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["bytes"] = len(data)
            if trajectories is not None and trajectories.num_rows:
                tdata = table_to_parquet_bytes(trajectories, md)
                write_bytes(self.path, self.trajectory_file(chunk), tdata)
                entry["trajectories"] = {
                    "file": self.trajectory_file(chunk),
                    "sha256": hashlib.sha256(tdata).hexdigest(),
                    "rows": int(trajectories.num_rows),
                }
            entry.update(info or {})
            entry["written"] = time.time()
            self._append_journal(entry)
        except OSError as e:
            raise ChunkWriteError(
                f"could not store chunk {chunk} in {self.path}: {e.strerror or e}. The chunks "
                "stored so far are intact; free space (or fix the disk) and rerun the same scan "
                "to resume."
            ) from e
        return entry

    def _append_journal(self, entry: Mapping) -> None:
        line = (json.dumps(entry, sort_keys=True, allow_nan=True) + "\n").encode()
        append_bytes(self.path, JOURNAL, line)

    # -- reading ------------------------------------------------------------------------
    def read_journal(self) -> dict[int, dict]:
        """Journal entries by chunk id (the last entry of a chunk wins; torn lines skipped).

        Complete lines that are not a JSON object with an integer `chunk` are kept aside
        (`finished_chunks(..., strict=True)` refuses them).
        """
        entries: dict[int, dict] = {}
        self._journal_errors, self._lines = [], {}
        if not self.journal_path.exists() and not self.journal_path.is_symlink():
            return entries
        data = read_bytes(self.path, JOURNAL)
        # The last piece has no newline: empty, or a line torn by a crash while appending.
        for lineno, raw in enumerate(data.split(b"\n")[:-1], start=1):
            try:
                e = json.loads(raw)
            except ValueError:
                self._journal_errors.append((lineno, "<line>", "is not JSON"))
                continue
            c = e.get("chunk") if isinstance(e, dict) else None
            if not _is_int(c):
                self._journal_errors.append((lineno, "chunk", "is missing or not an integer"))
                continue
            entries[c] = e
            self._lines[c] = lineno
        return entries

    def _entry_problem(self, chunk: int, entry: Mapping) -> str | None:
        """Why journal line `entry` of `chunk` is malformed (None if well formed)."""
        where = f"{JOURNAL} line {self._lines.get(chunk, '?')}"
        fields = (("file", str), ("sha256", str), ("rows", int))
        for name, kind in fields:
            v = entry.get(name)
            if v is None:
                return f"{where}: `{name}` is missing"
            if not isinstance(v, kind) or isinstance(v, bool):
                return f"{where}: `{name}` must be {kind.__name__}, found {v!r}"
        if entry["file"] != self.chunk_file(chunk):
            return (f"{where}: `file` is {entry['file']!r}, expected {self.chunk_file(chunk)!r} "
                    f"for chunk {chunk}")
        t = entry.get("trajectories")
        if t is not None:
            if not isinstance(t, dict):
                return f"{where}: `trajectories` must be an object"
            for name, kind in fields:
                v = t.get(name)
                if not isinstance(v, kind) or isinstance(v, bool):
                    return f"{where}: `trajectories.{name}` is missing or not {kind.__name__}"
            if t["file"] != self.trajectory_file(chunk):
                return (f"{where}: `trajectories.file` is {t['file']!r}, expected "
                        f"{self.trajectory_file(chunk)!r}")
        return None

    def _file_problem(self, rel: str, sha: str, rows: int, chunk: int) -> str | None:
        try:
            data = read_bytes(self.path, rel)
        except (OSError, StoreError) as e:
            return f"{rel}: cannot be read ({getattr(e, 'strerror', None) or e})"
        if hashlib.sha256(data).hexdigest() != sha:
            return f"{rel}: `sha256` does not match the journal"
        try:
            meta = pq.read_metadata(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError):
            return f"{rel}: not a Parquet file"
        if meta.num_rows != rows:
            return f"{rel}: `rows` is {meta.num_rows}, the journal says {rows}"
        kv = meta.metadata or {}
        if kv.get(b"jaxflow.spec_sha256") != self._spec_hash().encode():
            return f"{rel}: `jaxflow.spec_sha256` is not the manifest's (a chunk of another scan)"
        if kv.get(b"jaxflow.chunk") != str(chunk).encode():
            return f"{rel}: `jaxflow.chunk` is {kv.get(b'jaxflow.chunk')!r}, expected {chunk}"
        return None

    def _spec_hash(self) -> str:
        if self.manifest is None:
            self.read_manifest()
        return self.manifest["spec_sha256"]

    def chunk_problem(self, chunk: int, entry: Mapping) -> str | None:
        """Why journalled chunk `chunk` cannot be used (None if it is intact): its journal
        line, its file (hash, Parquet, metadata) and its rows against the manifest."""
        why = self._entry_problem(chunk, entry)
        if why is not None:
            return why
        if self.manifest is None:
            self.read_manifest()
        spec = self.manifest["spec"]
        if entry["rows"] != chunk_rows(spec, chunk):
            return (f"{JOURNAL} line {self._lines.get(chunk, '?')}: `rows` is {entry['rows']}, "
                    f"chunk {chunk} of n = {spec['n']} has {chunk_rows(spec, chunk)}")
        why = self._file_problem(entry["file"], entry["sha256"], entry["rows"], chunk)
        if why is not None:
            return why
        t = entry.get("trajectories")
        if t is None:
            return None
        if t["rows"] != trajectory_rows(spec, chunk):
            return (f"{JOURNAL} line {self._lines.get(chunk, '?')}: `trajectories.rows` is "
                    f"{t['rows']}, expected {trajectory_rows(spec, chunk)}")
        return self._file_problem(t["file"], t["sha256"], t["rows"], chunk)

    def verify(self, entry: Mapping, chunk: int | None = None) -> bool:
        """Is this journalled chunk intact (see `chunk_problem`)?"""
        chunk = entry.get("chunk") if chunk is None else chunk
        return _is_int(chunk) and self.chunk_problem(chunk, entry) is None

    def finished_chunks(self, n_chunks: int, *, strict: bool = False
                        ) -> tuple[dict[int, dict], list[int]]:
        """(intact journalled chunks, ids of journalled chunks that failed verification).

        The reasons are in `self.problems`. With `strict` (reading a store), a malformed
        journal line or a chunk id outside `[0, n_chunks)` raises `StoreIntegrityError` and
        a chunk that failed raises `ChunkCorruptedError`; without (resuming), those lines
        are ignored and the failed chunks are recomputed.
        """
        good, bad = {}, []
        self.problems = {}
        entries = self.read_journal()
        if strict:
            for lineno, field, why in self._journal_errors:
                raise StoreIntegrityError(self.path, f"{JOURNAL} line {lineno}", field, why)
        for chunk, e in sorted(entries.items()):
            if not 0 <= chunk < n_chunks:
                if strict:
                    raise StoreIntegrityError(
                        self.path, f"{JOURNAL} line {self._lines[chunk]}", "chunk",
                        f"is {chunk}, outside [0, {n_chunks}) of the manifest's n_chunks",
                    )
                continue
            why = self.chunk_problem(chunk, e)
            if why is None:
                good[chunk] = e
            else:
                bad.append(chunk)
                self.problems[chunk] = why
        if strict and bad:
            raise ChunkCorruptedError(self.path, bad, self.problems[bad[0]])
        return good, bad

    def read_table(self, chunks: list[int], *, columns: list[str] | None = None) -> pa.Table:
        tables = [pq.read_table(self.chunk_path(c), columns=columns) for c in chunks]
        if not tables:
            return pa.table({})
        return pa.concat_tables(tables).replace_schema_metadata(None)

    def read_trajectories(self, entries: Mapping[int, Mapping]) -> pa.Table | None:
        # The layout's path of each chunk (the one verified), never a path from the journal.
        paths = [self.trajectory_path(c) for c, e in sorted(entries.items())
                 if e.get("trajectories")]
        if not paths:
            return None
        return pa.concat_tables([pq.read_table(p) for p in paths]).replace_schema_metadata(None)
