"""`Problem`: a pure JAX objective, its example point, a sampler of initial points.

Everything here is validated eagerly (with `jax.eval_shape`, so nothing is compiled) so
that a mistake in the problem definition is reported before any integration starts. A
`Problem` is a value: once built it cannot be changed (anything derived from it, such as
its vector field, is cached outside it, see `jaxflow._field.cached_field`).
"""

from __future__ import annotations

import abc
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Problem", "Uniform", "Normal", "AbstractSampler", "CallableSampler"]


# --------------------------------------------------------------------------- samplers
class AbstractSampler(abc.ABC):
    """Draws initial points. Subclasses implement `sample(key, n, dim, dtype) -> (n, dim)`
    and, to be recorded in scan manifests, `describe() -> dict` (JSON data)."""

    @abc.abstractmethod
    def sample(self, key, n: int, dim: int, dtype) -> jax.Array:
        """`n` points of dimension `dim` in `dtype`, drawn with the PRNG `key`."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (kind and parameters)."""
        return {"kind": type(self).__name__}


def _as_bound(value, field: str, sampler: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{sampler}: `{field}` must be a real number or an array of real numbers, "
            f"got {value!r}."
        ) from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{sampler}: `{field}` contains NaN or infinity ({arr.tolist()}); "
            f"give finite bounds, e.g. {sampler}(-1.0, 1.0)."
        )
    return arr


class Uniform(AbstractSampler):
    r"""Initial points uniform in the box $[\text{low}, \text{high}]^d$.

    `low` and `high` are scalars or arrays broadcastable to the flat dimension $d$.
    """

    def __init__(self, low=-1.0, high=1.0):
        self.low = _as_bound(low, "low", "Uniform")
        self.high = _as_bound(high, "high", "Uniform")
        if np.any(self.low >= self.high):
            raise ValueError(
                f"Uniform: need low < high in every coordinate, got low={self.low.tolist()}, "
                f"high={self.high.tolist()}."
            )

    def _check_dim(self, dim: int):
        for name, b in (("low", self.low), ("high", self.high)):
            if b.ndim > 1 or (b.ndim == 1 and b.shape[0] not in (1, dim)):
                raise ValueError(
                    f"Uniform: `{name}` has shape {b.shape} but the problem has {dim} flat "
                    f"coordinates; give a scalar or an array of shape ({dim},)."
                )

    def sample(self, key, n, dim, dtype):
        self._check_dim(dim)
        u = jax.random.uniform(key, (n, dim), dtype=dtype)
        low = jnp.asarray(self.low, dtype)
        high = jnp.asarray(self.high, dtype)
        return low + (high - low) * u

    def describe(self):
        return {"kind": "uniform", "low": self.low.tolist(), "high": self.high.tolist()}

    def __repr__(self):
        return f"Uniform(low={self.low.tolist()}, high={self.high.tolist()})"


class Normal(AbstractSampler):
    r"""Initial points $x_0 \sim \mathcal N(\text{mean}, \text{scale}^2 I)$."""

    def __init__(self, mean=0.0, scale=1.0):
        self.mean = _as_bound(mean, "mean", "Normal")
        self.scale = _as_bound(scale, "scale", "Normal")
        if np.any(self.scale <= 0):
            raise ValueError(f"Normal: `scale` must be positive, got {self.scale.tolist()}.")

    def sample(self, key, n, dim, dtype):
        for name, b in (("mean", self.mean), ("scale", self.scale)):
            if b.ndim > 1 or (b.ndim == 1 and b.shape[0] not in (1, dim)):
                raise ValueError(
                    f"Normal: `{name}` has shape {b.shape} but the problem has {dim} flat "
                    f"coordinates; give a scalar or an array of shape ({dim},)."
                )
        z = jax.random.normal(key, (n, dim), dtype=dtype)
        return jnp.asarray(self.mean, dtype) + jnp.asarray(self.scale, dtype) * z

    def describe(self):
        return {"kind": "normal", "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    def __repr__(self):
        return f"Normal(mean={self.mean.tolist()}, scale={self.scale.tolist()})"


class CallableSampler(AbstractSampler):
    """Wraps a user function `fn(key, n) -> points` (flat `(n, d)` or a batched pytree)."""

    def __init__(self, fn: Callable, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"sampler must be callable as fn(key, n), got {fn!r}.")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        self._problem: Problem | None = None

    def sample(self, key, n, dim, dtype):
        pts = self.fn(key, n)
        assert self._problem is not None
        flat = self._problem.flatten_batch(pts, what="sampler output")
        return flat.astype(dtype)

    def describe(self):
        return {"kind": "callable", "name": self.name}

    def __repr__(self):
        return f"CallableSampler({self.name})"


# --------------------------------------------------------------------------- problem
class _FlatObjective:
    """$f$ on flat vectors (and the flat <-> pytree layout it needs).

    Separate from `Problem` so that what fields and compiled programs hold (this object)
    does not keep the problem alive: caches keyed weakly by the problem can let it go.
    Compared by identity, like a bound method of one problem.
    """

    __slots__ = ("f", "treedef", "shapes", "sizes", "__weakref__")

    def __init__(self, f: Callable, treedef, shapes: tuple, sizes: tuple):
        self.f = f
        self.treedef = treedef
        self.shapes = shapes
        self.sizes = sizes

    def unravel(self, x_flat):
        """Flat vector `(d,)` -> pytree like `example`, keeping the dtype of `x_flat`."""
        parts, start = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            parts.append(jnp.reshape(x_flat[start : start + size], shape))
            start += size
        return jax.tree_util.tree_unflatten(self.treedef, parts)

    def __call__(self, x_flat):
        """$f$ on a flat vector, returned in the dtype of `x_flat`.

        Data captured by `f` may be float64 while a run is float32 (or the reverse); the
        value is cast to the dtype of the point so that a run stays in one precision.
        """
        out = self.f(self.unravel(x_flat))
        dtype = getattr(x_flat, "dtype", None)
        if (
            dtype is not None
            and jnp.issubdtype(dtype, jnp.floating)
            and jnp.issubdtype(out.dtype, jnp.floating)
            and out.dtype != dtype
        ):
            out = out.astype(dtype)
        return out

    def __repr__(self):
        return f"<flat objective of {getattr(self.f, '__qualname__', repr(self.f))}>"


class Problem:
    r"""A loss $f$ to study, with where to start trajectories from.

    **Arguments:**

    - `f`: a pure JAX function from a flat vector or any pytree of real arrays to a real
      scalar. It may be nonsmooth (`abs`, `maximum`, `relu`, ...).
    - `example`: a point of the domain (fixes the pytree structure, shapes and dtype), or
    - `dim`: the dimension, when `f` takes a flat vector.
    - `sampler`: `jaxflow.Uniform(low, high)` (default `Uniform(-1, 1)`),
      `jaxflow.Normal(mean, scale)`, or a callable `key, n -> points`.
    - `name`: used in reports and file names.
    - `global_infimum`: $\inf f$ when known (used by reports to call a value spurious).
    - `facts`: any other known facts (e.g. `{"bounded_trajectories": True}`), kept as
      metadata and printed in reports.
    - `nonsmooth`: `False` for $C^1$ losses (velocity $-\nabla f$), `True` when kinks
      must be handled with the minimal-norm Clarke subgradient.
    - `description`: one line for reports.
    - `data`: arrays the loss was built from (e.g. `{"M": ...}`), kept as a read-only
      mapping `problem.data` (empty by default).

    Validation happens here, before anything is compiled: `f` must return a real scalar
    at `example`, `example` must be floating point, and the sampler must produce points
    of the right shape. A problem is immutable: setting an attribute afterwards raises
    `AttributeError`.
    """

    def __init__(
        self,
        f: Callable,
        *,
        example=None,
        dim: int | None = None,
        sampler: AbstractSampler | Callable | None = None,
        name: str = "problem",
        global_infimum: float | None = None,
        facts: Mapping[str, Any] | None = None,
        nonsmooth: bool = False,
        description: str = "",
        data: Mapping[str, Any] | None = None,
    ):
        if not callable(f):
            raise TypeError(f"Problem: `f` must be a callable, got {type(f).__name__}.")
        if (example is None) == (dim is None):
            raise ValueError(
                "Problem: give exactly one of `example` (a point of the domain, any pytree "
                "of float arrays) or `dim` (the length of a flat input vector)."
            )
        if dim is not None:
            if not isinstance(dim, (int, np.integer)) or dim <= 0:
                raise ValueError(f"Problem: `dim` must be a positive integer, got {dim!r}.")
            # A host array: `jnp.zeros` would compile two small programs in every process.
            example = np.zeros((int(dim),), dtype=jnp.result_type(float))
        leaves, treedef = jax.tree_util.tree_flatten(example)
        if not leaves:
            raise ValueError("Problem: `example` has no array leaves.")
        shapes, dtypes = [], []
        for leaf in leaves:
            a = leaf if hasattr(leaf, "dtype") else np.asarray(leaf)
            if not jnp.issubdtype(a.dtype, jnp.floating):
                kind = "complex" if jnp.issubdtype(a.dtype, jnp.complexfloating) else str(a.dtype)
                raise TypeError(
                    f"Problem `{name}`: `example` has a leaf of dtype {kind}; jaxflow "
                    "integrates real floating-point variables. Convert it, e.g. "
                    "`example=jnp.zeros(shape, jnp.float32)` (integer inputs cannot move "
                    "along a flow)."
                )
            shapes.append(tuple(a.shape))
            dtypes.append(a.dtype)
        self.f = f
        self.name = str(name)
        self.description = description
        self.treedef = treedef
        self.shapes = tuple(shapes)
        self.sizes = tuple(int(math.prod(s)) for s in shapes)
        self.dim = int(sum(self.sizes))
        self.example = example
        self.global_infimum = None if global_infimum is None else float(global_infimum)
        self.facts = types.MappingProxyType(dict(facts or {}))
        self.nonsmooth = bool(nonsmooth)
        self.data = types.MappingProxyType(dict(data or {}))
        self._objective = _FlatObjective(f, treedef, self.shapes, self.sizes)
        if sampler is None:
            sampler = Uniform(-1.0, 1.0)
        elif not isinstance(sampler, AbstractSampler):
            sampler = CallableSampler(sampler)
        self.sampler = sampler
        if isinstance(sampler, CallableSampler):
            sampler._problem = self
        self._check_objective()
        self._check_sampler()
        self._frozen = True

    # -- immutability -------------------------------------------------------------------
    def __setattr__(self, name, value):
        if self.__dict__.get("_frozen", False):
            raise AttributeError(
                f"Problem `{self.name}` is immutable: cannot set `{name}`. Build a new "
                "Problem instead (extra arrays go in `data=`)."
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        raise AttributeError(f"Problem `{self.name}` is immutable: cannot delete `{name}`.")

    def __getstate__(self):
        # A mappingproxy does not pickle: ship `data` and `facts` as plain dicts.
        return {**self.__dict__, "data": dict(self.data), "facts": dict(self.facts)}

    def __setstate__(self, state):
        state = {**state, "data": types.MappingProxyType(state["data"]),
                 "facts": types.MappingProxyType(state["facts"])}
        self.__dict__.update(state)

    def with_facts(self, **facts) -> Problem:
        """A copy of this problem with more known facts (the objective, sampler and
        validation are shared; nothing is re-evaluated)."""
        state = {**self.__dict__, "facts": types.MappingProxyType({**self.facts, **facts})}
        new = object.__new__(type(self))
        new.__dict__.update(state)
        return new

    # -- flat <-> pytree --------------------------------------------------------------
    def unravel(self, x_flat):
        """Flat vector `(d,)` -> pytree like `example`, keeping the dtype of `x_flat`."""
        return self._objective.unravel(x_flat)

    def ravel(self, x):
        """Pytree like `example` -> flat vector."""
        leaves = jax.tree_util.tree_leaves(x)
        return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])

    def flatten_batch(self, xs, what: str = "x0") -> jax.Array:
        """A batch of points (flat `(n, d)` or a pytree with leading axis n) -> `(n, d)`."""
        leaves, treedef = jax.tree_util.tree_flatten(xs)
        if len(leaves) == 1 and treedef == jax.tree_util.tree_structure(0):
            arr = jnp.asarray(leaves[0])
            if arr.ndim == 2 and arr.shape[1] == self.dim:
                return arr
            if arr.ndim == 1 and self.dim == 1:
                return arr[:, None]
            raise ValueError(
                f"{what}: expected an array of shape (n, {self.dim}) for problem "
                f"`{self.name}` (flat dimension {self.dim}), got shape {tuple(arr.shape)}."
                + (" For a single point use x0[None]." if arr.ndim == 1 else "")
            )
        if treedef != self.treedef:
            raise ValueError(
                f"{what}: pytree structure {treedef} does not match the problem's example "
                f"structure {self.treedef}."
            )
        n = None
        flat = []
        for leaf, shape in zip(leaves, self.shapes):
            leaf = jnp.asarray(leaf)
            if leaf.shape[1:] != shape or leaf.ndim != len(shape) + 1:
                raise ValueError(
                    f"{what}: a leaf has shape {tuple(leaf.shape)}, expected (n, *{shape})."
                )
            if n is not None and leaf.shape[0] != n:
                raise ValueError(f"{what}: leaves disagree on the batch size.")
            n = leaf.shape[0]
            flat.append(jnp.reshape(leaf, (n, -1)))
        return jnp.concatenate(flat, axis=1)

    # -- the objective on flat vectors -------------------------------------------------
    @property
    def f_flat(self) -> Callable:
        """$f$ on a flat vector, returned in the dtype of `x_flat` (`problem.f_flat(x)`).

        Data captured by `f` may be float64 while a run is float32 (or the reverse); the
        value is cast to the dtype of the point so that a run stays in one precision. The
        same object on every access, and it holds no reference to the problem.
        """
        return self._objective

    def sample(self, key, n: int, dtype=None) -> jax.Array:
        """Draws `n` initial points as a flat `(n, d)` array."""
        if not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"sample: `n` must be a positive integer, got {n!r}.")
        dtype = dtype or jnp.result_type(float)
        return self.sampler.sample(key, int(n), self.dim, dtype)

    # -- validation --------------------------------------------------------------------
    def _check_objective(self):
        x = jax.ShapeDtypeStruct((self.dim,), jnp.result_type(float))
        try:
            out = jax.eval_shape(lambda v: self.f(self.unravel(v)), x)
        except Exception as e:  # the message of the user's error is the useful part
            raise ValueError(
                f"Problem `{self.name}`: evaluating `f` on a point shaped like `example` "
                f"failed: {type(e).__name__}: {e}"
            ) from e
        if not hasattr(out, "shape") or not hasattr(out, "dtype"):
            raise TypeError(
                f"Problem `{self.name}`: `f` must return a JAX scalar, got {type(out).__name__}."
            )
        if jnp.issubdtype(out.dtype, jnp.complexfloating):
            raise TypeError(
                f"Problem `{self.name}`: `f` returns complex values ({out.dtype}); a loss must "
                "be real. Return e.g. `jnp.abs(z)**2` or `z.real`."
            )
        if out.shape != ():
            raise ValueError(
                f"Problem `{self.name}`: `f` must return a scalar, got shape {out.shape}. "
                "Reduce it (e.g. `jnp.sum(...)`) or fix the shapes of `example`."
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise TypeError(
                f"Problem `{self.name}`: `f` returns dtype {out.dtype}; it must return a real "
                "floating-point scalar."
            )

    def _check_sampler(self):
        key = jax.ShapeDtypeStruct((2,), jnp.uint32)
        try:
            out = jax.eval_shape(
                lambda k: self.sampler.sample(k, 3, self.dim, jnp.result_type(float)), key
            )
        except (ValueError, TypeError) as e:
            raise type(e)(f"Problem `{self.name}`: sampler: {e}") from e
        except Exception as e:
            raise ValueError(
                f"Problem `{self.name}`: calling the sampler as sampler(key, n) failed: "
                f"{type(e).__name__}: {e}"
            ) from e
        if tuple(out.shape) != (3, self.dim):
            raise ValueError(
                f"Problem `{self.name}`: sampler returned shape {tuple(out.shape)} for n=3, "
                f"expected (3, {self.dim})."
            )

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (used in scan manifests and reports)."""
        return {
            "name": self.name,
            "dim": self.dim,
            "shapes": [list(s) for s in self.shapes],
            "sampler": self.sampler.describe(),
            "global_infimum": self.global_infimum,
            "nonsmooth": self.nonsmooth,
            "facts": {k: v for k, v in self.facts.items() if _is_json_data(v)},
        }

    def __repr__(self):
        return f"Problem(name={self.name!r}, dim={self.dim}, sampler={self.sampler!r})"


def _is_json_data(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))
