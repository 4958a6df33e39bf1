r"""The on-disk store of a sweep: one manifest over a directory of scan stores.

Layout of `out/`:

```
out/
  sweep.json               the sweep's spec (problem, fixed parameters, N, seed, flow and
                           detector options), its SHA-256, the grid and its points
  .lock, .writer.json      held by the one process writing the sweep
  points/hidden=2,points=4/   one scan store per grid point (`jaxflow._scan.store`)
  report/                  written by `jaxflow report`
```

Each point is an ordinary scan (`jaxflow.scan` with the point's parameters added to the
fixed ones): its chunks, journal, integrity checks and resumption are the scan store's,
and `jaxflow.load(out / "points" / name)` opens it alone. A point's starts use the scan's
seeding scheme with the sweep's seed, so they do not depend on the rest of the grid.

`sweep.json` is written atomically (`jaxflow._files`), carries the SHA-256 of its own
canonical JSON, and names each point's directory, which must be the one derived from the
point's parameters (`point_dir`): a store edited to point elsewhere is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path

from .._files import check_no_symlink, make_dirs, read_bytes, write_bytes
from .._json import canonical_json
from .._scan.errors import SpecMismatchError, StoreError, StoreIntegrityError
from .._scan.store import Store, diff_specs

__all__ = ["SweepStore", "point_dir", "SWEEP", "POINTS"]

SWEEP = "sweep.json"
POINTS = "points"
FORMAT = "jaxflow-sweep"
FORMAT_VERSION = 1
_SAFE = re.compile(r"^[A-Za-z0-9_=,.+-]{1,120}$")


def point_dir(params: Mapping) -> str:
    """The directory name of a grid point: `hidden=2,points=4` (parameters in sorted
    order), or `p-<hash>` when a value would not make a plain file name."""
    name = ",".join(f"{k}={params[k]}" for k in sorted(params))
    if _SAFE.match(name) and not name.startswith("."):
        return name
    return "p-" + hashlib.sha256(canonical_json(dict(params)).encode()).hexdigest()[:16]


def _body_sha(body: Mapping) -> str:
    return hashlib.sha256(canonical_json(dict(body)).encode()).hexdigest()


class SweepStore:
    """A sweep's output directory (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self._lock_store = Store(self.path)  # its lock is the sweep's lock

    @staticmethod
    def is_sweep(path) -> bool:
        return (Path(path) / SWEEP).is_file()

    def point_path(self, params: Mapping) -> Path:
        return self.path / POINTS / point_dir(params)

    def check_links(self) -> None:
        for name in (SWEEP, POINTS, ".lock", ".writer.json", "report"):
            check_no_symlink(self.path / name)

    def read(self) -> dict | None:
        """The verified `sweep.json`, or `None` if absent."""
        if not (self.path / SWEEP).exists() and not (self.path / SWEEP).is_symlink():
            return None
        try:
            data = json.loads(read_bytes(self.path, SWEEP))
        except (OSError, ValueError) as e:
            raise StoreError(
                f"{self.path / SWEEP} is unreadable ({e}); not a jaxflow sweep?") from e
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StoreError(
                f"{self.path} is not a jaxflow sweep directory (format field missing).")
        if data.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path} was written by sweep format "
                             f"{data.get('format_version')!r}; this jaxflow reads "
                             f"{FORMAT_VERSION}.")
        body = {k: v for k, v in data.items() if k != "sha256"}
        try:
            ok = data.get("sha256") == _body_sha(body)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise StoreIntegrityError(self.path, SWEEP, "sha256",
                                      "does not match the file's content (it was edited)")
        if data.get("spec_sha256") != _body_sha(data.get("spec", {})):
            raise StoreIntegrityError(self.path, SWEEP, "spec_sha256",
                                      "does not match the stored spec")
        axes = data["spec"].get("axes")
        grid = data.get("grid")
        if not (isinstance(axes, list) and isinstance(grid, dict) and sorted(axes) == sorted(grid)):
            raise StoreIntegrityError(self.path, SWEEP, "grid", "does not match spec.axes")
        data["grid"] = {a: grid[a] for a in axes}  # JSON objects are stored sorted
        for p in data.get("points", []):
            if not isinstance(p, dict) or p.get("dir") != point_dir(p.get("params", {})):
                raise StoreIntegrityError(self.path, SWEEP, "points",
                                          f"names the directory {p!r}, not its parameters' own")
            if sorted(p["params"]) != sorted(axes):
                raise StoreIntegrityError(self.path, SWEEP, "points",
                                          f"{p['params']} are not a point of the grid's axes")
            p["params"] = {a: p["params"][a] for a in axes}
        return data

    def compare(self, stored: Mapping, spec: Mapping) -> None:
        diffs = [("spec." + k, a, b) for k, a, b in diff_specs(stored["spec"], dict(spec))]
        if diffs:
            raise SpecMismatchError(self.path, diffs)

    def refuse_grid(self, problems: list[str]) -> None:
        raise SpecMismatchError(self.path, [("grid", "; ".join(problems), "(only added values "
                                             "are accepted)")])

    def check_new(self) -> None:
        """Refuse a non-empty directory that is not a sweep (before anything is written)."""
        if self.path.exists() and any(p.name not in (".lock", ".writer.json")
                                      for p in self.path.iterdir()):
            raise StoreError(
                f"{self.path} exists, is not empty and has no {SWEEP}; refusing to write a sweep "
                "into it. Choose a new or empty output directory."
            )

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_store._acquire_lock()

    def release(self) -> None:
        self._lock_store.release()

    def write(self, spec: Mapping, grid: Mapping, points: list[Mapping],
              created: str | None = None) -> dict:
        body = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "spec": dict(spec), "spec_sha256": _body_sha(spec),
            "grid": dict(grid),
            "points": [{"params": dict(p), "dir": point_dir(p)} for p in points],
            "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        data = dict(body, sha256=_body_sha(body))
        write_bytes(self.path, SWEEP, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        make_dirs(self.path, POINTS)
        return data
