"""The exception hierarchy: every error jaxflow raises on purpose derives from `JaxflowError`.

Bad arguments still raise `ValueError`/`TypeError` (the subclasses below that describe bad
input also derive from them, so `except ValueError` keeps working); a single trajectory
never raises, it gets a `jaxflow.Status`.
"""

from __future__ import annotations

__all__ = ["JaxflowError"]


class JaxflowError(Exception):
    """Base class of jaxflow's own errors (stores, scans, unsupported kinks)."""
