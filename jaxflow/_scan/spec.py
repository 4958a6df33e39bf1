r"""The scan spec: what a scan computes, as canonical JSON, and the environment it ran in.

The spec fixes every row of a scan: the problem (its reference and the fingerprint of its
objective), $N$, the seed and chunk size, the dtype, the flow options and the detector
options. Its SHA-256 names the scan in the store; a resumed scan must match it exactly.
Solvers are recorded by name (`"Kvaerno5"`, or `"jaxflow.<Stepper>"` with non-default
`params`), step-size controllers as a dict of their fields; floats follow the JSON policy
of `jaxflow._json` ($\pm\infty$ as `"inf"`/`"-inf"`; NaN is refused, a spec must be exact).
This module encodes these into the spec and decodes them back for the workers.

The environment record (jax/jaxlib/jaxflow versions, the source fingerprint, x64 and PRNG
flags) is stored next to the spec, not in it: a resumed scan or a worker with other
versions is refused, but the spec's hash does not depend on them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path

from .._json import canonical_json, float_from_json, json_float
from .._options import solver_from_spec, solver_name, solver_to_spec

__all__ = [
    "scan_spec",
    "solver_spec",
    "solver_name",
    "solver_instance",
    "controller_spec",
    "controller_from_spec",
    "flow_arguments",
    "program_key",
    "environment",
    "jaxflow_version",
    "source_fingerprint",
]


def _spec_float(value, name: str):
    """A float field of the spec: finite or +-inf (JSON policy); NaN cannot be recorded."""
    out = json_float(value)
    if value is not None and out is None:
        raise ValueError(f"scan: `{name}` is NaN; a scan records finite values or +-inf only.")
    return out


# --------------------------------------------------------------------------- solvers
# A solver is recorded by name (`jaxflow._options` owns the encoding, shared with
# `FlowOptions.to_spec`); these are the names the scan modules use.
solver_spec = solver_to_spec
solver_instance = solver_from_spec


# --------------------------------------------------------------------------- controllers
def controller_spec(ctrl, dt0) -> dict:
    """A diffrax step-size controller as recorded in the spec (`{"kind": "pid", ...}`)."""
    import diffrax

    if ctrl is None:
        ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
    if isinstance(ctrl, diffrax.ConstantStepSize):
        if dt0 is None or not float(dt0) > 0:
            raise ValueError("stepsize_controller=ConstantStepSize() needs a positive dt0.")
        return {"kind": "constant"}
    if isinstance(ctrl, diffrax.PIDController):
        out = {"kind": "pid"}
        for name in ("rtol", "atol", "pcoeff", "icoeff", "dcoeff", "dtmax", "safety",
                     "factormin", "factormax"):
            v = getattr(ctrl, name)
            try:
                out[name] = None if v is None else _spec_float(v, f"PIDController.{name}")
            except TypeError as e:
                raise TypeError(f"PIDController.{name} must be a scalar, got {v!r}.") from e
        if ctrl.dtmin is not None:
            raise ValueError("PIDController(dtmin=...) is not supported by jaxflow.")
        return out
    raise TypeError(
        "stepsize_controller must be diffrax.PIDController(...) or diffrax.ConstantStepSize(), "
        f"got {type(ctrl).__name__}."
    )


def controller_from_spec(spec: Mapping):
    """The diffrax controller recorded by `controller_spec`, built again."""
    import diffrax

    if spec["kind"] == "constant":
        return diffrax.ConstantStepSize()
    kw = {k: float_from_json(v) for k, v in spec.items() if k != "kind"}
    return diffrax.PIDController(**kw)


# --------------------------------------------------------------------------- the spec
def scan_spec(*, problem: Mapping, n: int, seed: int, chunk_size: int, n_chunks: int,
              dtype: str, t1, solver, stepsize_controller: Mapping, dt0, gtol,
              escape_radius, max_steps: int, checkpoints_per_decade: int, t_first,
              lanes: int | None, stop_at_convergence: bool, classify: Mapping,
              save_trajectories: int, save_states: int) -> dict:
    """The spec of a scan from validated options (`solver` and `stepsize_controller`
    already encoded by `solver_spec` and `controller_spec`)."""
    spec = {
        "problem": dict(problem),
        "n": n,
        "seed": int(seed),
        "chunk_size": chunk_size,
        "n_chunks": n_chunks,
        "dtype": dtype,
        "keys": "chunk i: sampler(fold_in(key(seed), i), chunk_size)",
        "flow": {
            "t1": _spec_float(t1, "t1"), "solver": solver,
            "stepsize_controller": stepsize_controller, "dt0": _spec_float(dt0, "dt0"),
            "gtol": _spec_float(gtol, "gtol"),
            "escape_radius": _spec_float(escape_radius, "escape_radius"),
            "max_steps": max_steps, "checkpoints_per_decade": int(checkpoints_per_decade),
            "t_first": _spec_float(t_first, "t_first"), "lanes": lanes,
            "stop_at_convergence": bool(stop_at_convergence),
        },
        "classify": classify,
        "save_trajectories": int(save_trajectories),
        "save_states": save_states,
    }
    try:
        canonical_json(spec)
    except (TypeError, ValueError) as e:
        raise TypeError(f"scan: classify_options must be JSON-able, got {classify!r}.") from e
    return spec


def flow_arguments(flow_spec: Mapping) -> dict:
    """Keyword arguments of `jaxflow.flow` recorded in a spec's `flow` section
    (`lanes` is `None` when left to the worker's backend)."""
    fs = flow_spec
    return dict(
        t1=float(fs["t1"]), solver=solver_instance(fs["solver"]),
        stepsize_controller=controller_from_spec(fs["stepsize_controller"]),
        dt0=float_from_json(fs["dt0"]), gtol=float(fs["gtol"]),
        escape_radius=float(fs["escape_radius"]), max_steps=int(fs["max_steps"]),
        checkpoints_per_decade=int(fs["checkpoints_per_decade"]),
        t_first=float_from_json(fs["t_first"]), lanes=fs["lanes"],
        stop_at_convergence=bool(fs["stop_at_convergence"]),
    )


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
