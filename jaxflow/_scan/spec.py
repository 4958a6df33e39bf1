r"""The scan spec: what a scan computes, as canonical JSON, and the environment it ran in.

The spec fixes every row of a scan: the problem (its reference and the fingerprint of its
objective), $N$, the seed and chunk size, the dtype, the flow options and the detector
options. Its SHA-256 names the scan in the store; a resumed scan must match it exactly.
The `"flow"` section is `jaxflow.FlowOptions.to_spec` (solvers by name, controllers as a
dict of their fields, floats under the JSON policy of `jaxflow._json`), read back by
`FlowOptions.from_spec` on the workers.

The environment record (jax/jaxlib/jaxflow versions, the source fingerprint, x64 and PRNG
flags) is stored next to the spec, not in it: a resumed scan or a worker with other
versions is refused, but the spec's hash does not depend on them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

from .._json import canonical_json

__all__ = ["scan_spec", "check_classify_options", "program_key", "environment", "jaxflow_version", "source_fingerprint"]


# --------------------------------------------------------------------------- the spec
def scan_spec(*, problem: Mapping, n: int, seed: int, chunk_size: int, n_chunks: int,
              dtype: str, flow: Mapping, classify: Mapping, save_trajectories: int,
              save_states: int) -> dict:
    """The spec of a scan from validated options (`flow`: `FlowOptions.to_spec`)."""
    spec = {
        "problem": dict(problem),
        "n": n,
        "seed": int(seed),
        "chunk_size": chunk_size,
        "n_chunks": n_chunks,
        "dtype": dtype,
        "keys": "chunk i: sampler(fold_in(key(seed), i), chunk_size)",
        "flow": dict(flow),
        "classify": classify,
        "save_trajectories": int(save_trajectories),
        "save_states": save_states,
    }
    try:
        canonical_json(spec)
    except (TypeError, ValueError) as e:
        raise TypeError(f"scan: classify_options must be JSON-able, got {classify!r}.") from e
    return spec


def check_classify_options(options: Mapping | None) -> dict:
    """`classify_options` of a scan, checked before anything is written: the fields of
    `jaxflow.DetectorOptions` (built here, so its own checks run) and `horizon`, as
    finite real numbers. Returns them as a plain dict."""
    import math

    from .._detect import DetectorOptions

    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            f"scan: classify_options must be a mapping of DetectorOptions fields, got "
            f"{type(options).__name__}."
        )
    options = dict(options)
    fields = set(DetectorOptions.__dataclass_fields__)
    unknown = sorted(set(map(str, options)) - fields - {"horizon"})
    if unknown:
        raise ValueError(
            f"scan: classify_options has unknown key(s) {unknown}; valid keys are the "
            f"DetectorOptions fields {sorted(fields)} and 'horizon'."
        )
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value
        ):
            raise ValueError(
                f"scan: classify_options[{key!r}] must be a finite real number, got {value!r}."
            )
    if "horizon" in options and not options["horizon"] > 0:
        raise ValueError(
            f"scan: classify_options['horizon'] must be positive, got {options['horizon']!r}."
        )
    try:
        DetectorOptions(**{k: float(v) for k, v in options.items() if k != "horizon"})
    except ValueError as e:
        raise ValueError(f"scan: classify_options: {e}") from None
    return options


def program_key(spec: Mapping) -> str:
    """The part of a spec that decides the compiled chunk program (not the problem's
    source, `n` or the seed)."""
    keep = {k: spec[k] for k in ("dtype", "chunk_size", "flow", "classify")}
    return canonical_json(keep)


# --------------------------------------------------------------------------- environment
def jaxflow_version() -> str:
    """jaxflow's version from the installed package metadata."""
    try:
        return importlib.metadata.version("jaxflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def environment() -> dict:
    """Versions and global JAX flags a scan's rows depend on (stored next to the spec)."""
    import jax
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "jaxflow": jaxflow_version(),
        "jaxflow_source": source_fingerprint(),
        "x64": bool(jax.config.jax_enable_x64),
        "prng_impl": str(jax.config.jax_default_prng_impl),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
    }


_SOURCE_HASH: list[str] = []


def source_fingerprint() -> str:
    """SHA-256 of every `.py` file of the jaxflow package folder (paths and contents).

    The version number does not change while a development install is edited; this
    does, so a resumed scan or a worker running other code is caught. Every module
    counts: a hand-kept list of modules that "cannot change a row" goes stale as code
    moves, and a false refusal is cheaper than a silently mixed store.
    """
    if not _SOURCE_HASH:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_HASH.append(h.hexdigest())
    return _SOURCE_HASH[0]
