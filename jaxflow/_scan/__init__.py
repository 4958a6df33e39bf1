"""Monte Carlo landscape scans: chunked, resumable, on many devices or machines.

One concern per module:

- `api`: `scan`, `load`, `ScanResult` and the report of a scan;
- `scheduler`: submitting chunks to an executor, retries, progress, storing results;
- `worker`: computing one chunk (keys, padding, the device pool);
- `spec`: the scan spec (solvers, controllers, flow options) and the environment record;
- `references`: problem references, rebuilding problems on workers, fingerprints;
- `store`: the on-disk store (manifest, Parquet chunks, journal, lock);
- `summary`: the report of a stored scan, streamed chunk by chunk, and the stored types;
- `cache`: JAX's persistent compilation cache;
- `errors`: `ScanError`, `StoreError` and its subclasses.
"""

from .api import ScanProgress as ScanProgress
from .api import ScanResult as ScanResult
from .api import build_report as build_report
from .api import load as load
from .api import scan as scan
from .errors import ChunkCorruptedError as ChunkCorruptedError
from .errors import ChunkWriteError as ChunkWriteError
from .errors import ScanError as ScanError
from .errors import ScanLockedError as ScanLockedError
from .errors import SpecMismatchError as SpecMismatchError
from .errors import StoreError as StoreError
from .errors import StoreIntegrityError as StoreIntegrityError
from .errors import UnsafePathError as UnsafePathError
from .references import problem_fingerprint as problem_fingerprint
from .references import resolve_problem as resolve_problem
from .spec import source_fingerprint as source_fingerprint
