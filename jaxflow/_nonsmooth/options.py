"""`MinNormOptions`: the static options of the minimal-norm computation, validated once.

Every stage of the nonsmooth family (slots, QPs, certificates, bundle, field) reads its
budgets and tolerances from one `MinNormOptions`; `machine_eps` is the dtype scale the
rounding band is measured in.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

__all__ = ["MinNormOptions", "machine_eps"]


def machine_eps(dtype) -> float:
    """$\\epsilon$ of a floating dtype (the unit of `MinNormOptions.band_ulps`)."""
    return float(jnp.finfo(dtype).eps)


@dataclasses.dataclass(frozen=True)
class MinNormOptions:
    r"""Static options of the minimal-norm computation.

    - `band_ulps`: a kink counts as tied when its pieces differ by at most
      `band_ulps` $\cdot\,\epsilon\,\cdot$ (a running bound of the rounding error of
      the difference); scaled by the dtype's $\epsilon$, so float32 gets a wider band.
    - `max_active`: kink groups given selector slots (all of them when the loss has
      fewer); more tied kinks than slots gives `TRUNCATED`.
    - `max_pieces`: pieces per group kept (ties of a `jnp.max` over many entries).
    - `vertex_slots`: tied kinks enumerated when kinks are nested, and for the
      realisability test (at most $2^{\text{vertex\_slots}}$ vertices).
    - `qp_method`: how the QP over kinks with two pieces (`abs`, `relu`, `max` of two)
      is solved: `"active_set"` (exact in finitely many steps, one Cholesky of the free
      kinks per step), `"fista"` (`qp_iterations` first-order steps, then a Newton
      `polish`), or `"auto"` (the active set for losses with up to 64 kink slots,
      `qp.ACTIVE_SET_MAX`; FISTA above).
      Kinks with more pieces and nested kinks always use FISTA or Wolfe's method.
    - `qp_iterations`: FISTA budget (a Newton polish follows); `polish`.
    - `reach`: in the prox-linear stepper a kink is a candidate when a step of length
      $h$ at the current speed could reach it, times this safety factor.
    - `fallback`: `None` (unsupported primitives raise) or `"bundle"` (black-box
      gradient sampling, flagged `APPROXIMATE`); `method="bundle"` forces it.
    - `bundle_size`, `bundle_radius`: samples (default $\min(2d, 32) + 1$) and relative
      radius (default $\sqrt{\epsilon}$) of the gradient bundle.
    """

    band_ulps: float = 64.0
    max_active: int = 256
    max_pieces: int = 8
    vertex_slots: int = 6
    qp_method: str = "auto"
    qp_iterations: int = 300
    polish: bool = True
    reach: float = 2.0
    fallback: str | None = None
    method: str = "kinks"
    bundle_size: int | None = None
    bundle_radius: float | None = None

    def __post_init__(self):
        if self.fallback not in (None, "bundle"):
            raise ValueError(f"fallback must be None or 'bundle', got {self.fallback!r}.")
        if self.method not in ("kinks", "bundle"):
            raise ValueError(f"method must be 'kinks' or 'bundle', got {self.method!r}.")
        if self.qp_method not in ("auto", "active_set", "fista"):
            raise ValueError(
                f"qp_method must be 'auto', 'active_set' or 'fista', got {self.qp_method!r}."
            )
        for name in ("max_active", "max_pieces", "vertex_slots", "qp_iterations"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise ValueError(f"MinNormOptions.{name} must be a positive integer, got {v!r}.")
        if not self.band_ulps >= 0:
            raise ValueError(f"MinNormOptions.band_ulps must be >= 0, got {self.band_ulps!r}.")
        if self.vertex_slots > 10:
            raise ValueError("MinNormOptions.vertex_slots must be <= 10 (2^slots vertices).")

