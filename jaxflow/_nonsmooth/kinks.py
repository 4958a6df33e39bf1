r"""Finding the kinks of a plain JAX function by interpreting its jaxpr.

A loss such as $\|XY^T - M\|_1$ or $(x_2\max(x_1, 0) - 1)^2$ (Figure 2) is written with
`jnp.abs`, `jnp.maximum`, `jax.nn.relu`, `jnp.max`, `jnp.where(x > 0, ...)`. Each of
these is a **kink**: an output that equals one of several smooth *pieces*, the largest
(`abs`, `max`, `reduce_max`), the smallest (`min`, `reduce_min`) or the one a comparison
picks (`select_n`). `KinkProgram` traces the function once, finds every kink (also
inside `jit`, `checkpoint`, and the `custom_jvp` of `relu`/`relu6`), and re-evaluates
the function with a **selector** per kink:

$$F(x, \delta\theta) = f \text{ with each kink output replaced by }
\textstyle\sum_j (\mathbb 1[j = \text{natural}] + \delta\theta_j)\,\text{piece}_j(x).$$

At $\delta\theta = 0$ this is $f$ itself and $\nabla_x F = \nabla f$ wherever $f$ is
differentiable. Moving a kink's weight onto another piece that ties with the natural
one at $x$ gives another selection gradient; the convex hull of these is a conservative
field that contains the Clarke subdifferential (Bolte–Pauwels), with equality under the
certificates checked in `jaxflow._nonsmooth.certificates`.

The interpretation runs at trace time: under `jit` only the arithmetic remains.

Primitives it cannot handle when they act on a value that depends on $x$ and reach the
output (jumps such as `sign`, `floor`, `argmax`, `sort`; kinks inside `scan`,
`while_loop`, `cond`) raise `UnsupportedKinkError` naming the primitive and where it
was called; `jaxflow.MinNormField.for_problem(problem, fallback="bundle")` (passed to
`flow`/`descend` as `field=`) opts into an approximate black-box method instead.

How each primitive is interpreted is a table of rules, `_RULES` (primitive name ->
rule); primitives without an entry go through `_generic_rule`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import source_info_util
from jax.extend import core as jcore

# `jax.extend.core` exports `DropVar` in recent versions (0.10 here, not 0.8); before, only
# the private module has it.
try:
    _DropVar = jcore.DropVar
except AttributeError:  # pragma: no cover - older jax
    from jax._src.core import DropVar as _DropVar

from .._errors import JaxflowError

__all__ = ["KinkProgram", "KinkSite", "Probe", "UnsupportedKinkError"]


class UnsupportedKinkError(JaxflowError, ValueError):
    """A primitive whose nonsmoothness jaxflow cannot represent (see the message)."""


# Kinds of kinks and their orientation: +1 the output is the largest piece (a convex
# kink), -1 the smallest (concave), 0 a comparison picks it.
_ORIENT = {"abs": 1, "max": 1, "reduce_max": 1, "min": -1, "reduce_min": -1, "select": 0}

# custom_jvp functions whose body is interpreted (their custom rule picks one element
# of the subdifferential, relu'(0) = 0); every other custom_jvp is treated as smooth,
# which is right for softplus / logaddexp whose bodies contain max and abs.
_CUSTOM_JVP_KINKS = frozenset({"relu", "relu6"})

_COMPARE = {"gt": (1, True), "ge": (1, False), "lt": (-1, True), "le": (-1, False)}
# Predicates that never switch on an open set of x (NaN / infinity tests, equality of
# continuous values): bound as they are.
_OPAQUE_PRED = frozenset({"eq", "ne", "is_finite"})
_DISCRETE = frozenset({
    "sign", "floor", "ceil", "round", "nextafter", "argmax", "argmin", "sort", "top_k",
    "cummax", "cummin", "reduce_precision", "rem", "reduce_and", "reduce_or", "reduce_xor",
    "population_count", "clz", "shift_left", "shift_right_logical",
    "shift_right_arithmetic", "reduce_window_max", "reduce_window_min",
    "select_and_scatter_add", "select_and_gather_add", "random_bits", "approx_top_k",
})
_KINK_PRIMS = frozenset({"abs", "max", "min", "clamp", "reduce_max", "reduce_min"})
# Call-like primitives whose body is interpreted (see `_inner`).
_CALL_LIKE = ("jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint")
_SMOOTH_CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
# Shape-only primitives: magnitudes (and comparison operands) go through them unchanged.
_STRUCTURAL = frozenset({
    "broadcast_in_dim", "reshape", "transpose", "squeeze", "expand_dims", "slice",
    "dynamic_slice", "gather", "concatenate", "pad", "rev", "copy", "copy_p",
    "convert_element_type", "select_n", "dynamic_update_slice", "scatter", "scatter-add",
    "scatter_add", "reduce_sum", "cumsum",
})


@dataclasses.dataclass(frozen=True)
class KinkSite:
    """A kink found in the traced function (static).

    - `kind`: `"abs"`, `"max"`, `"min"`, `"reduce_max"`, `"reduce_min"` or `"select"`;
    - `shape`: one group of pieces per element of this shape;
    - `npieces`: pieces per group;
    - `orientation`: +1 (output = largest piece), -1 (smallest), 0 (picked by a
      comparison);
    - `upstream`: indices of kinks whose outputs feed this kink's pieces or predicate;
    - `source`: where it was called.
    """

    index: int
    kind: str
    shape: tuple
    npieces: int
    orientation: int
    upstream: frozenset
    source: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class Probe(NamedTuple):
    r"""What a kink looks like at $x$ (tuples over sites).

    - `w` `(*shape, m)`: switching scores, oriented so that the natural piece has the
      largest; `w[nat] - w[j] \ge 0` is how far piece $j$ is from taking over;
    - `nat` `(*shape,)`: index of the natural piece (the one $f$ evaluates);
    - `mag` `(*shape, m)`: a running rounding-error scale of $w_\text{nat} - w_j$, so
      that $|w_\text{nat} - w_j| \le \kappa\,\epsilon\,\text{mag}$ means "tied".
    """

    w: tuple
    nat: tuple
    mag: tuple


# --------------------------------------------------------------------------- values
class _Pred(NamedTuple):
    """A boolean that is `sign * (p - q) > 0` (or >= 0): a switching surface."""

    sign: int
    p: Any
    q: Any
    mag: Any
    sites: frozenset


class _TracedValue:
    """A value in the interpreter with static provenance: whether it depends on x
    (`taint`), the kinks upstream of it (`sites`), a value-numbering `token`, the
    switching surface it carries if it is a comparison (`pred`), and a running
    rounding-error scale (`mag`)."""

    __slots__ = ("val", "taint", "sites", "token", "pred", "mag")

    def __init__(self, val, taint=False, sites=frozenset(), token=None, pred=None, mag=None):
        self.val = val
        self.taint = taint
        self.sites = sites
        self.token = token if token is not None else object()
        self.pred = pred  # None, a _Pred, "opaque" or ("discrete", primitive name)
        self.mag = mag


def _source(eqn) -> str:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - best effort only
        return "<unknown>"


def _custom_jvp_name(eqn) -> str:
    cj = eqn.params.get("call_jaxpr")
    info = getattr(getattr(cj, "jaxpr", None), "debug_info", None)
    src = getattr(info, "func_src_info", None) or ""
    return src.split(" ")[0] if src else ""


def _subjaxprs(eqn):
    """All sub-jaxprs of an equation, as open jaxprs."""
    out = []
    for p in eqn.params.values():
        vals = p if isinstance(p, (tuple, list)) else (p,)
        for v in vals:
            if isinstance(v, jcore.ClosedJaxpr):
                out.append(v.jaxpr)
            elif isinstance(v, jcore.Jaxpr):
                out.append(v)
    return out


def _inner(eqn):
    """(jaxpr, consts) to interpret for a call-like equation, else None."""
    name = eqn.primitive.name
    if name in ("jit", "pjit"):
        cj = eqn.params["jaxpr"]
        return cj.jaxpr, cj.consts
    if name in ("closed_call", "core_call"):
        cj = eqn.params["call_jaxpr"]
        if isinstance(cj, jcore.ClosedJaxpr):
            return cj.jaxpr, cj.consts
        return cj, []
    if name in ("remat2", "checkpoint"):
        j = eqn.params["jaxpr"]
        if isinstance(j, jcore.ClosedJaxpr):
            return j.jaxpr, j.consts
        return j, []
    if name == "custom_jvp_call" and _custom_jvp_name(eqn) in _CUSTOM_JVP_KINKS:
        cj = eqn.params["call_jaxpr"]
        return cj.jaxpr, cj.consts
    return None


def _contains_switch(jaxpr) -> str | None:
    """Name of the first kink / switching primitive inside `jaxpr` (recursively)."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in _KINK_PRIMS or name in _DISCRETE or name in _COMPARE:
            return name
        if name == "custom_jvp_call" and _custom_jvp_name(eqn) not in _CUSTOM_JVP_KINKS:
            continue
        for sub in _subjaxprs(eqn):
            found = _contains_switch(sub)
            if found:
                return found
    return None


# --------------------------------------------------------------------------- relevance
class _Rel(NamedTuple):
    ins: tuple  # bool per invar
    eqns: tuple  # per eqn: (relevant: bool, sub: _Rel | None)


def _relevance(jaxpr, out_rel) -> _Rel:
    """Which equations can influence the outputs through a differentiable path.

    Kinks that only feed `stop_gradient` (the shift inside `logsumexp`) or dropped
    outputs are not kinks of the function.
    """
    rel = set()
    for v, r in zip(jaxpr.outvars, out_rel, strict=True):
        if r and not isinstance(v, jcore.Literal):
            rel.add(v)
    info = [None] * len(jaxpr.eqns)
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        outs = [v in rel for v in eqn.outvars if not isinstance(v, _DropVar)]
        if not any(outs):
            info[i] = (False, None)
            continue
        if eqn.primitive.name == "stop_gradient":
            info[i] = (True, None)
            continue
        inner = _inner(eqn)
        sub = None
        if inner is not None:
            sub_out = [(not isinstance(v, _DropVar)) and v in rel for v in eqn.outvars]
            sub = _relevance(inner[0], sub_out)
            ins = sub.ins
        else:
            ins = [True] * len(eqn.invars)
        for v, r in zip(eqn.invars, ins, strict=True):
            if r and not isinstance(v, jcore.Literal):
                rel.add(v)
        info[i] = (True, sub)
    ins = tuple(v in rel for v in jaxpr.invars)
    return _Rel(ins=ins, eqns=tuple(info))


# --------------------------------------------------------------------------- context
class _Interpretation:
    """The state of one interpretation of the jaxpr: `"discover"` registers the kink
    sites, `"eval"` re-evaluates $F$ with the selector perturbations `dth`/`eps` (or the
    frozen selection `theta`) around the natural pieces (given as `nat`, or decided here),
    collecting the probes and, with `tie_tol`, the tie count."""

    def __init__(
        self,
        program,
        mode,
        dth=None,
        eps=None,
        track_mag=False,
        theta=None,
        tie_tol=None,
        nat=None,
    ):
        self.program = program
        self.theta = theta
        self.nat = nat
        self.tie_tol = tie_tol
        self.ties = jnp.zeros((), jnp.int32)
        self.mode = mode  # "discover" or "eval"
        self.dth = dth
        self.eps = eps
        self.track_mag = track_mag
        self.sites: list[KinkSite] = [] if mode == "discover" else list(program.sites)
        self.keys: dict = {}
        self.count = 0
        self.probe: dict[int, tuple] = {}
        self.src: list[str] = []

    def source(self, eqn) -> str:
        """Where `eqn` was called: its own source line, else the enclosing call's; inside
        a call, followed by the outermost call's line. (An equation inside a call may
        carry the source of another trace: JAX caches the jaxprs of its own jitted
        helpers, e.g. `jnp.where` before jax 0.10, with the lines of whichever call traced
        them first; the outermost call site always belongs to this trace.)"""
        here = _source(eqn)
        if not here.strip() or here.startswith("<"):
            for s in reversed(self.src):
                if s.strip():
                    return s
            return here
        outer = self.src[0] if self.src else ""
        if outer.strip() and not outer.startswith("<") and outer != here:
            return f"{here}, inside the call at {outer}"
        return here

    def site(self, key, kind, shape, npieces, upstream, source) -> tuple[int, bool]:
        """Index of the kink with this key; a repeated key (same kink applied to the same
        operands, also across `jit` boundaries) reuses the selector."""
        if key in self.keys:
            return self.keys[key], False
        idx = self.count
        self.count += 1
        self.keys[key] = idx
        if self.mode == "discover":
            self.sites.append(
                KinkSite(
                    idx,
                    kind,
                    tuple(shape),
                    int(npieces),
                    _ORIENT[kind],
                    frozenset(upstream),
                    source,
                )
            )
        else:
            s = self.sites[idx]
            if (s.kind, s.shape, s.npieces) != (kind, tuple(shape), int(npieces)):
                raise RuntimeError(  # pragma: no cover - internal consistency
                    f"kink {idx} changed between tracings: {s} vs {kind}{shape}x{npieces}"
                )
        return idx, True


def _hashable(v):
    try:
        hash(v)
        return v
    except TypeError:
        return ("id", id(v))


def _value_token(eqn, ins, i=0):
    """Value numbering: a pure primitive applied to the same operands gives the same
    value, so kinks of recomputed subexpressions (`abs(z[0])` twice) share a selector."""
    try:
        params = tuple(sorted((k, _hashable(v)) for k, v in eqn.params.items()))
        key = (eqn.primitive.name, params, tuple(m.token for m in ins), i)
        hash(key)
        return key
    except TypeError:
        return object()


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    if isinstance(params, tuple):  # older jax: (subfuns, params)
        subfuns, params = params
    else:
        subfuns = ()
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _absmag(v: _TracedValue):
    if v.mag is not None:
        return v.mag
    return jnp.abs(v.val) if _is_float(v.val) else None


def _unsupported(eqn, program, what: str, where: str | None = None):
    name = eqn.primitive.name
    raise UnsupportedKinkError(
        f"jaxflow cannot find the kinks of `{program.name}`: {what} "
        f"(primitive `{name}`, called at {where or _source(eqn)}). Supported kinks: abs, max/min "
        "(jnp.maximum, jnp.clip, jax.nn.relu/relu6), reduce_max/min (jnp.max, jnp.min) and "
        "comparisons that feed jnp.where/select, outside scan/while/cond. Rewrite the loss "
        "with those, or opt into the approximate black-box method with "
        "flow(problem, x0, field=jaxflow.MinNormField.for_problem(problem, fallback='bundle'))."
    )


# --------------------------------------------------------------------------- program
class KinkProgram:
    """The kinks of `fun` (a function of one flat vector) and $F(x, \\delta\\theta)$.

    Built once per dtype; `sites` lists the kinks. `lift(x, dth, eps)` evaluates $F$
    and returns the `Probe`; `dth` (tuple of `(*shape, m)` arrays) moves selector
    weight between pieces and `eps` (tuple of `(*shape,)` arrays) is added to each kink
    output, so that $\\partial F/\\partial\\epsilon$ is the cotangent of the kink.
    """

    def __init__(self, fun, dim: int, dtype, *, name: str = "f"):
        self.fun = fun
        self.name = name
        self.dim = int(dim)
        self.dtype = jnp.dtype(dtype)
        spec = jax.ShapeDtypeStruct((self.dim,), self.dtype)
        closed = jax.make_jaxpr(fun)(spec)
        if len(closed.jaxpr.outvars) != 1:
            raise ValueError(f"`{name}` must return one scalar.")
        self._closed = closed
        self._rel = _relevance(closed.jaxpr, [True])
        self.sites: tuple[KinkSite, ...] = ()
        ctx = _Interpretation(self, "discover")
        jax.eval_shape(lambda x: self._run(ctx, x)[0], spec)
        self.sites = tuple(ctx.sites)

    # -- static facts ------------------------------------------------------------------
    @property
    def nested(self) -> bool:
        """Whether some kink feeds another (then selection gradients are multilinear)."""
        return any(s.upstream for s in self.sites)

    @property
    def n_groups(self) -> int:
        return sum(s.size for s in self.sites)

    def describe(self) -> list[str]:
        return [
            f"{s.kind}{list(s.shape)} x{s.npieces} at {s.source}"
            + (f" (fed by kinks {sorted(s.upstream)})" if s.upstream else "")
            for s in self.sites
        ]

    def zeros(self, dtype=None):
        """`(dth, eps)` zero pytrees."""
        dtype = dtype or self.dtype
        dth = tuple(jnp.zeros(s.shape + (s.npieces,), dtype) for s in self.sites)
        eps = tuple(jnp.zeros(s.shape, dtype) for s in self.sites)
        return dth, eps

    # -- evaluation --------------------------------------------------------------------
    def lift(self, x, dth=None, eps=None, *, track_mag: bool = False, theta=None, nat=None):
        """$F(x, \\delta\\theta) + \\sum\\langle\\epsilon, \\text{kink outputs}\\rangle$, and the
        `Probe`.

        `nat` (tuple of `(*shape,)` piece indices, e.g. the `Probe.nat` of an earlier
        call) fixes the natural pieces that `dth` moves weight from, instead of deciding
        them here from the comparisons. Within one compiled program XLA may recompute
        those comparisons in several kernels that round differently (a fused
        multiply-add in one, not in the other), so at an exact tie two evaluations need
        not agree; pass the pieces decided once (`jaxflow._nonsmooth.slots`).

        With `theta` (tuple of `(*shape, m)` weights) every kink output is the fixed
        combination $\\sum_j \\theta_j\\,\\text{piece}_j(x)$ instead, whichever piece is
        natural at `x` (a frozen selection)."""
        ctx = _Interpretation(
            self, "eval", dth=dth, eps=eps, track_mag=track_mag, theta=theta, nat=nat
        )
        val = self._run(ctx, x)
        n = len(self.sites)
        w = tuple(ctx.probe[i][0] for i in range(n))
        nat = tuple(ctx.probe[i][1] for i in range(n))
        mag = tuple(ctx.probe[i][2] for i in range(n))
        return val[0], Probe(w=w, nat=nat, mag=mag)

    def count_ties(self, x, tol):
        """$(f(x), \\text{number of kink groups with a tie within } tol\\cdot\\text{mag})$,
        differentiable in $x$ (the natural selection): the cheap first pass."""
        ctx = _Interpretation(self, "eval", track_mag=True, tie_tol=tol)
        val = self._run(ctx, x)
        return val[0], jax.lax.stop_gradient(ctx.ties)

    def _run(self, ctx, x):
        x = jnp.asarray(x)
        xv = _TracedValue(x, taint=True, mag=jnp.abs(x) if ctx.track_mag else None)
        closed = self._closed
        outs = _eval_jaxpr(ctx, closed.jaxpr, closed.consts, [xv], self._rel)
        return [outs[0].val]


# --------------------------------------------------------------------------- interpreter
def _eval_jaxpr(ctx, jaxpr, consts, args, rel):
    env = {}

    def read(v):
        if isinstance(v, jcore.Literal):
            val = v.val
            tok = ("lit", float(np.asarray(val))) if np.ndim(val) == 0 else None
            return _TracedValue(
                jnp.asarray(val) if not isinstance(val, (int, float, bool)) else val, token=tok
            )
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = _TracedValue(c)
    for v, a in zip(jaxpr.invars, args, strict=True):
        env[v] = a
    for i, eqn in enumerate(jaxpr.eqns):
        relevant, sub = rel.eqns[i]
        ins = [read(v) for v in eqn.invars]
        if not relevant or not any(m.taint for m in ins) or eqn.primitive.name == "stop_gradient":
            outs = [_TracedValue(o) for o in _bind(eqn, [m.val for m in ins])]
            if ctx.track_mag:
                for o in outs:
                    o.mag = _absmag(o)
        else:
            outs = _RULES.get(eqn.primitive.name, _generic_rule)(ctx, eqn, ins, sub)
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, _DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _union(ins):
    s = frozenset()
    for m in ins:
        s = s | m.sites
        if isinstance(m.pred, _Pred):
            s = s | m.pred.sites
    return s


# --------------------------------------------------------------------------- rules
# One rule per primitive: `rule(ctx, eqn, ins, sub) -> list of output values`, called
# for relevant equations with an input that depends on x (see `_eval_jaxpr`). A
# primitive without an entry in `_RULES` goes through `_generic_rule`.
def _call_rule(ctx, eqn, ins, sub):
    """Call-like primitives (`jit`, `checkpoint`, the `custom_jvp` of relu/relu6): the
    body is interpreted, so kinks inside it are found."""
    jaxpr, consts = _inner(eqn)
    ctx.src.append(ctx.source(eqn))
    try:
        return _eval_jaxpr(ctx, jaxpr, consts, ins, sub)
    finally:
        ctx.src.pop()


def _smooth_custom_rule(ctx, eqn, ins, sub):
    """`custom_jvp`/`custom_vjp` functions taken as smooth (softplus, logaddexp, ...)."""
    outs = _bind(eqn, [m.val for m in ins])
    res = [_TracedValue(o, taint=True, sites=_union(ins)) for o in outs]
    if ctx.track_mag:
        _generic_mag(eqn, ins, res)
    return res


def _custom_jvp_rule(ctx, eqn, ins, sub):
    if _custom_jvp_name(eqn) in _CUSTOM_JVP_KINKS:
        return _call_rule(ctx, eqn, ins, sub)
    return _smooth_custom_rule(ctx, eqn, ins, sub)


def _abs_rule(ctx, eqn, ins, sub):
    return [_kink_abs(ctx, eqn, ins[0])]


def _max_min_rule(ctx, eqn, ins, sub):
    return [_kink_binary(ctx, eqn, eqn.primitive.name, ins[0], ins[1])]


def _clamp_rule(ctx, eqn, ins, sub):
    lo, xx, hi = ins
    t = _kink_binary(ctx, eqn, "max", xx, lo)
    return [_kink_binary(ctx, eqn, "min", t, hi)]


def _reduce_rule(ctx, eqn, ins, sub):
    return [_kink_reduce(ctx, eqn, eqn.primitive.name, ins[0])]


def _compare_rule(ctx, eqn, ins, sub):
    """A comparison: a boolean carrying its switching surface $\\pm(p - q)$."""
    name = eqn.primitive.name
    a, b = ins
    out = _bind(eqn, [a.val, b.val])[0]
    sgn, _ = _COMPARE[name]
    shape = jnp.shape(out)
    p = jnp.broadcast_to(jnp.asarray(a.val), shape)
    q = jnp.broadcast_to(jnp.asarray(b.val), shape)
    mag = None
    if ctx.track_mag:
        mag = jnp.broadcast_to(_absmag(a) + _absmag(b), shape)
    pred = _Pred(sgn, p, q, mag, _union(ins))
    token = ("cmp", name, a.token, b.token)
    return [_TracedValue(out, taint=True, sites=frozenset(), token=token, pred=pred)]


def _opaque_pred_rule(ctx, eqn, ins, sub):
    out = _bind(eqn, [m.val for m in ins])[0]
    return [_TracedValue(out, taint=True, sites=_union(ins), pred="opaque")]


def _not_rule(ctx, eqn, ins, sub):
    (a,) = ins
    out = _bind(eqn, [a.val])[0]
    if isinstance(a.pred, _Pred):
        pr = a.pred
        flipped = _Pred(-pr.sign, pr.p, pr.q, pr.mag, pr.sites)
        return [_TracedValue(out, taint=True, token=("not", a.token), pred=flipped)]
    if a.pred == "opaque":
        return [_TracedValue(out, taint=True, sites=_union(ins), pred="opaque")]
    return [_TracedValue(out, taint=True, sites=_union(ins), pred=("discrete", "not"))]


def _logic_rule(ctx, eqn, ins, sub):
    """`and`/`or`/`xor`: fine on opaque predicates; a combination of comparisons is not
    one switching surface (rejected where it selects, in `_kink_select`)."""
    name = eqn.primitive.name
    out = _bind(eqn, [m.val for m in ins])[0]
    if all(m.pred == "opaque" or not m.taint for m in ins):
        return [_TracedValue(out, taint=True, sites=_union(ins), pred="opaque")]
    return [_TracedValue(out, taint=True, sites=_union(ins), pred=("discrete", name))]


def _select_rule(ctx, eqn, ins, sub):
    return [_kink_select(ctx, eqn, ins)]


def _convert_rule(ctx, eqn, ins, sub):
    """A comparison cast to float is a selection between 0 and 1; any other cast of a
    boolean or to an integer that depends on x is a jump."""
    (a,) = ins
    new = eqn.params["new_dtype"]
    src_bool = jnp.result_type(a.val) == jnp.bool_
    if src_bool and isinstance(a.pred, _Pred) and jnp.issubdtype(new, jnp.floating):
        zero = _TracedValue(jnp.zeros(jnp.shape(a.val), new), token=("lit", 0.0))
        one = _TracedValue(jnp.ones(jnp.shape(a.val), new), token=("lit", 1.0))
        return [_select_from_pred(ctx, eqn, a, [zero, one])]
    if src_bool and a.pred in ("opaque", None):
        out = _bind(eqn, [a.val])[0]
        mag = jnp.abs(out) if ctx.track_mag else None
        return [_TracedValue(out, taint=True, sites=_union(ins), mag=mag)]
    if src_bool or (_is_float(a.val) and not jnp.issubdtype(new, jnp.floating)):
        _unsupported(
            eqn,
            ctx.program,
            where=ctx.source(eqn),
            what=f"a value that depends on x is converted to {jnp.dtype(new).name}, a jump",
        )
    return _generic_rule(ctx, eqn, ins, sub)


def _discrete_rule(ctx, eqn, ins, sub):
    _unsupported(
        eqn,
        ctx.program,
        where=ctx.source(eqn),
        what="a jump or a kink jaxflow cannot select (ties of sort/argmax, sign, rounding)",
    )


def _cond_rule(ctx, eqn, ins, sub):
    if ins[0].taint:
        _unsupported(
            eqn,
            ctx.program,
            where=ctx.source(eqn),
            what="lax.cond on a predicate that depends on x (write the "
            "branches with jnp.where so the switch becomes a kink)",
        )
    return _generic_rule(ctx, eqn, ins, sub)


def _generic_rule(ctx, eqn, ins, sub):
    """Every other primitive: smooth arithmetic (outputs depend on x, no kink), loops
    without kinks inside, and comparisons carried through shape-only primitives."""
    name = eqn.primitive.name
    sites = _union(ins)
    for s in _subjaxprs(eqn):
        found = _contains_switch(s)
        if found:
            _unsupported(
                eqn,
                ctx.program,
                where=ctx.source(eqn),
                what=f"`{found}` inside `{name}` (kinks inside scan, "
                "while_loop, fori_loop and cond are not supported)",
            )
    pred_ins = [m for m in ins if m.taint and m.pred is not None and not _is_float(m.val)]
    outs = _bind(eqn, [m.val for m in ins])
    if pred_ins:
        if all(m.pred == "opaque" for m in pred_ins):
            return [
                _TracedValue(
                    o,
                    taint=True,
                    sites=sites,
                    pred=None if _is_float(o) else "opaque",
                    mag=jnp.abs(o) if (ctx.track_mag and _is_float(o)) else None,
                )
                for o in outs
            ]
        a = ins[0]
        if not (
            name in _STRUCTURAL
            and isinstance(a.pred, _Pred)
            and len(pred_ins) == 1
            and pred_ins[0] is a
            and len(outs) == 1
        ):
            _unsupported(
                eqn,
                ctx.program,
                where=ctx.source(eqn),
                what="a comparison result is used other than to select between values",
            )
        # A comparison reshaped or broadcast: carry its switching surface along.
        rest = [m.val for m in ins[1:]]
        pr = a.pred
        p = _bind(eqn, [pr.p] + rest)[0]
        q = _bind(eqn, [pr.q] + rest)[0]
        mg = _bind(eqn, [pr.mag] + rest)[0] if pr.mag is not None else None
        return [
            _TracedValue(
                outs[0],
                taint=True,
                token=("struct", name, a.token),
                pred=_Pred(pr.sign, p, q, mg, pr.sites),
            )
        ]
    res = [
        _TracedValue(o, taint=True, sites=sites, token=_value_token(eqn, ins, i))
        for i, o in enumerate(outs)
    ]
    if ctx.track_mag:
        _generic_mag(eqn, ins, res)
    return res


_RULES = {
    **dict.fromkeys(_CALL_LIKE, _call_rule),
    **dict.fromkeys(_SMOOTH_CUSTOM, _smooth_custom_rule),
    "custom_jvp_call": _custom_jvp_rule,  # relu/relu6 interpreted, the rest smooth
    "abs": _abs_rule,
    "max": _max_min_rule,
    "min": _max_min_rule,
    "clamp": _clamp_rule,
    "reduce_max": _reduce_rule,
    "reduce_min": _reduce_rule,
    **dict.fromkeys(_COMPARE, _compare_rule),
    **dict.fromkeys(_OPAQUE_PRED, _opaque_pred_rule),
    "not": _not_rule,
    **dict.fromkeys(("and", "or", "xor"), _logic_rule),
    "select_n": _select_rule,
    "convert_element_type": _convert_rule,
    **dict.fromkeys(_DISCRETE, _discrete_rule),
    "cond": _cond_rule,
}


# --------------------------------------------------------------------------- magnitudes
def _generic_mag(eqn, ins, res):
    """Running rounding-error scale: $|a| + |b|$ for sums, $|a||b|$ for products, the
    same structure for reshapes and contractions, $|y| + |\\partial y\\,m|$ otherwise."""
    name = eqn.primitive.name
    mags = [_absmag(m) for m in ins]
    try:
        if name in ("add", "sub", "add_any"):
            out = [mags[0] + mags[1]]
        elif name == "mul":
            out = [mags[0] * mags[1]]
        elif name == "div":
            out = [mags[0] / jnp.abs(ins[1].val)]
        elif name == "neg":
            out = [mags[0]]
        elif name == "dot_general" or name in _STRUCTURAL:
            vals = [
                mg if (mg is not None and _is_float(m.val)) else m.val
                for m, mg in zip(ins, mags, strict=True)
            ]
            out = _bind(eqn, vals)
        else:
            fl = [i for i, m in enumerate(ins) if _is_float(m.val)]

            def f(*xs):
                vals = [m.val for m in ins]
                for i, xv in zip(fl, xs, strict=True):
                    vals[i] = xv
                return tuple(_bind(eqn, vals))

            prim = tuple(ins[i].val for i in fl)
            tang = tuple(
                jnp.broadcast_to(mags[i], jnp.shape(ins[i].val)).astype(jnp.result_type(ins[i].val))
                for i in fl
            )
            _, tout = jax.jvp(f, prim, tang)
            out = [
                jnp.abs(o) + jnp.abs(t) if _is_float(o) else None
                for o, t in zip((r.val for r in res), tout, strict=True)
            ]
    except Exception:  # a rule that does not apply: fall back to |y|
        out = [None] * len(res)
    for r, mg in zip(res, out, strict=True):
        if not _is_float(r.val):
            r.mag = None
        elif mg is None:
            r.mag = jnp.abs(r.val)
        else:
            r.mag = jnp.broadcast_to(mg, jnp.shape(r.val)).astype(jnp.result_type(r.val))


# --------------------------------------------------------------------------- kinks
class _Kink(NamedTuple):
    """A kink met by the interpreter, before it is registered (`_register_kink`).

    - `kind`: a key of `_ORIENT`; `key`: de-duplication key (same kink, same operands);
    - `pieces` `(*shape, m)`: the smooth pieces; `scores` `(*shape, m)`: switching
      scores (natural piece largest); `natural` `(*shape,)`: index of the natural piece;
    - `mag` `(*shape, m)` or None: rounding scale of the score differences;
    - `value`: the kink's output as `f` computes it; `out_mag`: its rounding scale;
    - `upstream`: kinks feeding this one;
    - `tie(tol)`: per group, whether another piece is within `tol * mag` of the natural
      one, from the unstacked operands (the cheap test of `KinkProgram.count_ties`).
    """

    kind: str
    key: tuple
    pieces: Any
    scores: Any
    natural: Any
    mag: Any
    value: Any
    upstream: frozenset
    out_mag: Any
    tie: Callable | None


def _register_kink(ctx, eqn, kink: _Kink) -> _TracedValue:
    """Registers a kink, records its probe, and returns the output value."""
    pv, nat = kink.pieces, kink.natural
    shape = jnp.shape(kink.value)
    m = pv.shape[-1]
    idx, first = ctx.site(kink.key, kink.kind, shape, m, kink.upstream, ctx.source(eqn))
    if ctx.nat is not None:
        nat = jnp.broadcast_to(ctx.nat[idx], shape)
    if first and ctx.tie_tol is not None and kink.tie is not None:
        ctx.ties = ctx.ties + jnp.sum(kink.tie(ctx.tie_tol), dtype=jnp.int32)
    if first:
        ctx.probe[idx] = (
            kink.scores,
            jax.lax.stop_gradient(nat).astype(jnp.int32),
            None if kink.mag is None else jax.lax.stop_gradient(kink.mag),
        )
    if ctx.theta is not None:
        # Frozen absolute selection (independent of which piece is natural here).
        safe = jnp.where(jnp.isfinite(pv), pv, 0.0)
        out = jnp.sum(ctx.theta[idx].astype(pv.dtype) * safe, axis=-1)
    elif ctx.dth is not None or ctx.eps is not None or ctx.nat is not None:
        safe = jnp.where(jnp.isfinite(pv), pv, 0.0)
        # The natural piece by a one-hot select, not a gather: the same value exactly
        # (one piece plus zeros), and its transpose in a gradient is another select
        # rather than a scatter, which cost a ReLU network's selection gradient 11
        # gradients of f on XLA:CPU.
        pick = jnp.arange(m, dtype=jnp.int32) == nat[..., None].astype(jnp.int32)
        out = jnp.sum(jnp.where(pick, pv, jnp.zeros((), pv.dtype)), axis=-1)
        if ctx.dth is not None:
            out = out + jnp.sum(ctx.dth[idx].astype(pv.dtype) * safe, axis=-1)
        if ctx.eps is not None:
            out = out + ctx.eps[idx].astype(pv.dtype)
    else:
        out = kink.value
    sites = frozenset(kink.upstream) | {idx}
    res = _TracedValue(out, taint=True, sites=sites, token=("kink", idx))
    if ctx.track_mag:
        res.mag = kink.out_mag if kink.out_mag is not None else jnp.abs(out)
    return res


def _kink_abs(ctx, eqn, z):
    val = _bind(eqn, [z.val])[0]
    pv = jnp.stack([z.val, -z.val], axis=-1)
    nat = (z.val < 0).astype(jnp.int32)
    mag = None
    if ctx.track_mag:
        mz = _absmag(z)
        mag = jnp.stack([2 * mz, 2 * mz], axis=-1)
    kink = _Kink(kind="abs", key=("abs", z.token), pieces=pv, scores=pv, natural=nat, mag=mag,
                 value=val, upstream=_union([z]),
                 out_mag=_absmag(z) if ctx.track_mag else None,
                 tie=lambda tol: jnp.abs(z.val) <= tol * _absmag(z))
    return _register_kink(ctx, eqn, kink)


def _kink_binary(ctx, eqn, kind, a, b):
    va, vb = jnp.asarray(a.val), jnp.asarray(b.val)
    dtype = jnp.result_type(va, vb)
    shape = jnp.broadcast_shapes(jnp.shape(va), jnp.shape(vb))
    va = jnp.broadcast_to(va, shape).astype(dtype)
    vb = jnp.broadcast_to(vb, shape).astype(dtype)
    val = jnp.maximum(va, vb) if kind == "max" else jnp.minimum(va, vb)
    pv = jnp.stack([va, vb], axis=-1)
    w = pv if kind == "max" else -pv
    nat = jnp.argmax(w, axis=-1)
    mag = out_mag = None
    if ctx.track_mag:
        ma = jnp.broadcast_to(_absmag(a), shape)
        mb = jnp.broadcast_to(_absmag(b), shape)
        mag = jnp.stack([ma + mb, ma + mb], axis=-1)
        out_mag = jnp.maximum(ma, mb)
    if not a.taint and b.taint:  # canonical order for de-duplication (max is symmetric)
        a, b = b, a
    key = (kind, a.token, b.token)

    def tie(tol):
        return jnp.abs(va - vb) <= tol * (
            jnp.broadcast_to(_absmag(a), shape) + jnp.broadcast_to(_absmag(b), shape)
        )

    kink = _Kink(kind=kind, key=key, pieces=pv, scores=w, natural=nat, mag=mag, value=val,
                 upstream=_union([a, b]), out_mag=out_mag, tie=tie)
    return _register_kink(ctx, eqn, kink)


def _kink_reduce(ctx, eqn, name, z):
    axes = tuple(int(a) for a in eqn.params["axes"])
    zv = jnp.asarray(z.val)
    keep = [i for i in range(zv.ndim) if i not in axes]
    perm = keep + list(axes)
    out_shape = tuple(zv.shape[i] for i in keep)
    m = int(np.prod([zv.shape[i] for i in axes], dtype=np.int64))
    pv = jnp.transpose(zv, perm).reshape(out_shape + (m,))
    val = _bind(eqn, [zv])[0]
    kind = "reduce_max" if name == "reduce_max" else "reduce_min"
    w = pv if kind == "reduce_max" else -pv
    nat = jnp.argmax(w, axis=-1)
    mag = out_mag = None
    if ctx.track_mag:
        mz = jnp.transpose(jnp.broadcast_to(_absmag(z), zv.shape), perm).reshape(out_shape + (m,))
        mn = jnp.take_along_axis(mz, nat[..., None], axis=-1)
        mag = mz + mn
        out_mag = mn[..., 0]

    def tie(tol):
        mz = jnp.transpose(jnp.broadcast_to(_absmag(z), zv.shape), perm).reshape(out_shape + (m,))
        top = jnp.max(w, axis=-1, keepdims=True)
        close = (top - w) <= tol * (mz + jnp.max(mz, axis=-1, keepdims=True))
        return jnp.sum(close, axis=-1) > 1

    kink = _Kink(kind=kind, key=(kind, axes, z.token), pieces=pv, scores=w, natural=nat, mag=mag,
                 value=val, upstream=_union([z]), out_mag=out_mag, tie=tie)
    return _register_kink(ctx, eqn, kink)


def _kink_select(ctx, eqn, ins):
    pred, cases = ins[0], ins[1:]
    if not pred.taint:
        outs = _bind(eqn, [m.val for m in ins])
        res = _TracedValue(outs[0], taint=any(c.taint for c in cases), sites=_union(cases))
        if ctx.track_mag:
            _generic_mag(eqn, ins, [res])
        return res
    if pred.pred == "opaque":
        outs = _bind(eqn, [m.val for m in ins])
        res = _TracedValue(outs[0], taint=True, sites=_union(ins))
        if ctx.track_mag:
            _generic_mag(eqn, ins, [res])
        return res
    if isinstance(pred.pred, tuple) and not isinstance(pred.pred, _Pred):
        _unsupported(
            eqn,
            ctx.program,
            where=ctx.source(eqn),
            what=f"a selection whose predicate combines comparisons with "
            f"`{pred.pred[1]}` (write nested jnp.where instead)",
        )
    if not isinstance(pred.pred, _Pred) or len(cases) != 2:
        _unsupported(
            eqn,
            ctx.program,
            where=ctx.source(eqn),
            what="a selection whose index depends on x through "
            "something other than one comparison (and/or of comparisons, argmax, "
            "an integer index)",
        )
    return _select_from_pred(ctx, eqn, pred, cases)


def _select_from_pred(ctx, eqn, pred, cases):
    pr = pred.pred
    pval = jnp.asarray(pred.val)
    shape = jnp.broadcast_shapes(jnp.shape(pval), *[jnp.shape(c.val) for c in cases])
    dtype = jnp.result_type(*[c.val for c in cases])
    c0 = jnp.broadcast_to(jnp.asarray(cases[0].val), shape).astype(dtype)
    c1 = jnp.broadcast_to(jnp.asarray(cases[1].val), shape).astype(dtype)
    pb = jnp.broadcast_to(pval, shape)
    val = jnp.where(pb, c1, c0)
    pv = jnp.stack([c0, c1], axis=-1)
    sd = pr.sign * (jnp.broadcast_to(pr.p, shape) - jnp.broadcast_to(pr.q, shape))
    sd = sd.astype(dtype)
    w = jnp.stack([-0.5 * sd, 0.5 * sd], axis=-1)
    nat = pb.astype(jnp.int32)
    mag = out_mag = None
    if ctx.track_mag:
        pm = jnp.broadcast_to(pr.mag, shape).astype(dtype) if pr.mag is not None else jnp.abs(sd)
        mag = jnp.stack([pm, pm], axis=-1)
        m0 = jnp.broadcast_to(_absmag(cases[0]), shape).astype(dtype)
        m1 = jnp.broadcast_to(_absmag(cases[1]), shape).astype(dtype)
        out_mag = jnp.where(pb, m1, m0)
    key = ("select", pred.token, cases[0].token, cases[1].token)
    upstream = _union(cases) | pr.sites

    def tie(tol):
        pm = jnp.broadcast_to(pr.mag, shape).astype(dtype) if pr.mag is not None else 0.0
        return jnp.abs(sd) <= tol * pm

    kink = _Kink(kind="select", key=key, pieces=pv, scores=w, natural=nat, mag=mag, value=val,
                 upstream=upstream, out_mag=out_mag, tie=tie)
    return _register_kink(ctx, eqn, kink)
