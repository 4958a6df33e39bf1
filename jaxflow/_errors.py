"""The exception hierarchy: every error jaxflow raises on purpose derives from `JaxflowError`.

Bad arguments still raise `ValueError`/`TypeError` (the subclasses below that describe bad
input also derive from them, so `except ValueError` keeps working); a single trajectory
never raises, it gets a `jaxflow.Status`.
"""

from __future__ import annotations

__all__ = ["JaxflowError", "StoreError", "UnsafePathError"]


class JaxflowError(Exception):
    """Base class of jaxflow's own errors (stores, scans, unsupported kinks)."""


class StoreError(JaxflowError, RuntimeError):
    """A problem with a scan store (`out/`) or the files written next to it.

    Derives from `RuntimeError` so that existing `except RuntimeError` handlers keep working.
    """


class UnsafePathError(StoreError):
    """A write would leave its directory: a symbolic link on the way, or a path with `..`."""
