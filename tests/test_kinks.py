"""Kink finding in plain JAX code, and the `jax.grad` behaviours at kinks it corrects."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow._nonsmooth.kinks import KinkProgram, UnsupportedKinkError


# --------------------------------------------------------------------------- jax.grad pins
# jaxflow exists because jax.grad picks one element of a conservative field at a kink,
# not the minimal-norm Clarke subgradient. If one of these changes in a JAX release the
# documentation (README "Nonsmooth losses") must be revisited.
def test_pinned_grad_abs_at_zero_is_plus_one():
    assert float(jax.grad(jnp.abs)(0.0)) == 1.0
    assert float(jax.grad(jnp.abs)(-0.0)) == 1.0


def test_pinned_grad_maximum_tie_splits_half():
    assert float(jax.grad(lambda x: jnp.maximum(x, 0.0))(0.0)) == 0.5
    assert float(jax.grad(lambda x: jnp.minimum(x, 0.0))(0.0)) == 0.5
    g = jax.grad(lambda z: jnp.maximum(z[0], z[1]))(jnp.array([1.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(g), [0.5, 0.5])


def test_pinned_grad_relu_at_zero_is_zero():
    assert float(jax.grad(jax.nn.relu)(0.0)) == 0.0


def test_pinned_grad_reduce_max_splits_over_ties():
    g = jax.grad(jnp.max)(jnp.array([2.0, 2.0, 1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(g), [1 / 3, 1 / 3, 0.0, 1 / 3])


def test_pinned_grad_is_not_minimal_norm_on_l1_factorization():
    """On ||XY^T - M||_1 at a point with zero residuals autodiff's choice (+1 on every
    tie) is longer than the minimal-norm subgradient."""
    rng = np.random.default_rng(0)
    m = n = 4
    x = rng.normal(size=(m, 1))
    y = rng.normal(size=(n, 1))
    mm = x @ y.T
    mm[0, 0] += 1.0  # one nonzero residual, the rest vanish

    def f(z):
        return jnp.sum(jnp.abs(z[:m, None] * z[None, m:] - mm))

    z = jnp.asarray(np.r_[x[:, 0], y[:, 0]])
    g = np.asarray(jax.grad(f)(z))
    res = jf.minnorm_subgradient(jf.Problem(f, dim=m + n, nonsmooth=True), z)
    assert np.linalg.norm(g) > 1.2 * float(res.stationarity)


# --------------------------------------------------------------------------- discovery
def _kinds(fun, dim=3):
    prog = KinkProgram(fun, dim, jnp.float64)
    return [(s.kind, s.shape, s.npieces) for s in prog.sites], prog


@pytest.mark.parametrize(
    "fun,expected",
    [
        (lambda z: jnp.abs(z).sum(), [("abs", (3,), 2)]),
        (lambda z: jnp.maximum(z[0], 0.0), [("max", (), 2)]),
        (lambda z: jnp.minimum(z, 1.0).sum(), [("min", (3,), 2)]),
        (lambda z: jax.nn.relu(z).sum(), [("max", (3,), 2)]),
        (lambda z: jax.nn.relu6(z[0]), [("max", (), 2), ("min", (), 2)]),
        (lambda z: jnp.max(z), [("reduce_max", (), 3)]),
        (lambda z: jnp.min(z.reshape(1, 3), axis=1).sum(), [("reduce_min", (1,), 3)]),
        (lambda z: jnp.clip(z[0], -1.0, 1.0), [("max", (), 2), ("min", (), 2)]),
        (lambda z: jax.lax.clamp(-1.0, z[0], 1.0), [("max", (), 2), ("min", (), 2)]),
        (lambda z: jnp.where(z[0] > 0, z[0], 0.1 * z[0]), [("select", (), 2)]),
        (lambda z: jax.nn.leaky_relu(z[1]), [("select", (), 2)]),
        (lambda z: (z[0] > 0).astype(z.dtype) * z[0], [("select", (), 2)]),
        (lambda z: jnp.linalg.norm(z, 1), [("abs", (3,), 2)]),
        (lambda z: jax.checkpoint(lambda y: jnp.abs(y).sum())(z), [("abs", (3,), 2)]),
        (lambda z: jax.jit(lambda y: jnp.maximum(y, 0.0))(z).sum(), [("max", (3,), 2)]),
        # smooth custom_jvp functions and stop-gradient shifts are not kinks
        (lambda z: jax.nn.softplus(z).sum() + jnp.logaddexp(z[0], z[1]), []),
        (lambda z: jax.nn.logsumexp(z), [("abs", (), 2)]),  # |sum exp| > 0: never tied
        (lambda z: jnp.sum(z**2), []),
    ],
)
def test_kink_discovery(fun, expected):
    kinds, _ = _kinds(fun)
    assert kinds == expected


def test_duplicate_kinks_share_a_selector():
    # The same kink applied to the same value (recomputed, or across jit) is one site.
    kinds, _ = _kinds(lambda z: jnp.abs(z[0]) + jnp.abs(z[0]) + jax.jit(jnp.abs)(z[0]))
    assert kinds == [("abs", (), 2)]


def test_nested_kinks_are_marked():
    _, prog = _kinds(lambda z: jnp.max(jnp.abs(z)))
    assert prog.nested and prog.sites[1].upstream == frozenset({0})
    _, prog = _kinds(lambda z: jnp.abs(z).sum() + jnp.maximum(z[0], 1.0))
    assert not prog.nested


CATALOGUE = [
    lambda z: jnp.abs(z[0] * z[1] - 1) + 0.05 * ((z[0] - 2) ** 2 + z[1] ** 2) + z[2] ** 2,
    lambda z: (z[1] * jnp.maximum(z[0], 0.0) - 1.0) ** 2 + jnp.abs(z[2]),
    lambda z: jnp.max(jnp.stack([z[0] ** 2, z[1], -z[0] + z[2]])),
    lambda z: jnp.sum(jax.nn.relu(jnp.outer(z, z) - 0.3)) + jnp.min(z),
    lambda z: jnp.sum(jnp.clip(z, -0.5, 0.5) ** 2) + jax.nn.leaky_relu(z[0] * z[1]),
    lambda z: jnp.max(jnp.abs(z)) + jnp.where(z[2] > z[0], z[2] ** 2, z[0] * z[2]),
]


@pytest.mark.parametrize("idx", range(len(CATALOGUE)))
def test_lift_reproduces_value_and_gradient_off_kinks(idx, getkey):
    """F(x, 0) = f(x) and grad F = jax.grad f at points where no kink is tied."""
    fun = CATALOGUE[idx]
    prog = KinkProgram(fun, 3, jnp.float64)
    dth, eps = prog.zeros()
    xs = jax.random.normal(getkey(), (6, 3), jnp.float64)
    for x in xs:
        val, _ = prog.lift(x, dth, eps)
        np.testing.assert_allclose(float(val), float(fun(x)), rtol=1e-14)
        g = jax.grad(lambda y: prog.lift(y, dth, eps)[0])(x)
        np.testing.assert_allclose(
            np.asarray(g), np.asarray(jax.grad(fun)(x)), rtol=1e-12, atol=1e-14
        )


def test_probe_band_is_dtype_aware():
    """At an exact zero of XY^T - M computed in float32 the residuals are ~1e-7; the
    rounding bound `mag` covers them, so the kinks count as tied in both dtypes."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(5, 2))
    mm = x @ y.T
    for dtype in (jnp.float32, jnp.float64):
        mj = jnp.asarray(mm, dtype)

        def f(z, mj=mj):
            return jnp.sum(jnp.abs(z[:8].reshape(4, 2) @ z[8:].reshape(5, 2).T - mj))

        prog = KinkProgram(f, 18, dtype)
        z = jnp.asarray(np.r_[x.ravel(), y.ravel()], dtype)
        _, probe = prog.lift(z, track_mag=True)
        w, mag = np.asarray(probe.w[0]), np.asarray(probe.mag[0])
        gap = np.abs(w[..., 0] - w[..., 1])
        band = 64 * np.finfo(np.dtype(dtype)).eps * mag[..., 0]
        assert np.all(gap <= band)
        assert np.all(band < 1e-3 if dtype == jnp.float32 else band < 1e-12)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "fun,prim",
    [
        (lambda z: jnp.sign(z[0]) * z[1], "sign"),
        (lambda z: jnp.sort(z)[0], "sort"),
        (lambda z: z[jnp.argmax(z)], "argmax"),
        (lambda z: jnp.floor(z[0]) + z[1], "floor"),
        (lambda z: jax.lax.fori_loop(0, 2, lambda i, c: c + jnp.abs(z[0]), 0.0), "scan"),
        (
            lambda z: jax.lax.while_loop(
                lambda c: c[1] < 2, lambda c: (c[0] + jnp.maximum(z[0], 0.0), c[1] + 1), (0.0, 0)
            )[0],
            "while",
        ),
        (lambda z: jax.lax.cond(z[0] > 0, lambda: z[1], lambda: z[2]), "convert_element_type"),
        (lambda z: jnp.where((z[0] > 0) & (z[1] > 0), z[0], 0.0), "and"),
    ],
)
def test_unsupported_primitives_raise_with_name(fun, prim):
    with pytest.raises(UnsupportedKinkError) as info:
        jf.Problem(fun, dim=3, nonsmooth=True)  # Problem itself is fine ...
        KinkProgram(fun, 3, jnp.float64)  # ... the kink finder names the primitive
    msg = str(info.value)
    assert f"`{prim}`" in msg and "fallback='bundle'" in msg and "test_kinks.py" in msg


def test_locations_inside_a_call_end_with_the_outermost_call_site():
    """A kink or an unsupported primitive inside a jitted helper is located at its own
    line and at the line of this trace that called the helper (older jax caches the
    jaxprs of its own helpers with the lines of another trace)."""
    import inspect

    @jax.jit
    def helper(z):
        return jnp.abs(z), jnp.sign(z[0])

    def f(x):
        a, s = helper(x)
        return jnp.sum(a) * s

    line = inspect.getsourcelines(f)[1] + 1  # the line that calls helper
    with pytest.raises(UnsupportedKinkError) as info:
        KinkProgram(f, 3, jnp.float64)
    msg = str(info.value)
    assert "`sign`" in msg and f"inside the call at {__file__}:{line}:" in msg, msg

    def g(x):
        return jnp.sum(helper(x)[0])

    (desc,) = KinkProgram(g, 3, jnp.float64).describe()
    g_line = inspect.getsourcelines(g)[1] + 1
    assert ".helper)" in desc and f"inside the call at {__file__}:{g_line}:" in desc, desc


def test_smooth_loops_and_custom_vjp_are_accepted():
    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x**2 * g,))

    def f(z):
        return jax.lax.fori_loop(0, 3, lambda i, c: c + z[0] ** 2, 0.0) + cube(z[1]) + jnp.abs(z[2])

    prog = KinkProgram(f, 3, jnp.float64)
    assert [s.kind for s in prog.sites] == ["abs"]


def test_unsupported_error_surfaces_from_flow_before_compiling():
    p = jf.Problem(lambda z: jnp.sign(z[0]) * z[0] + z[1] ** 2, dim=2, nonsmooth=True)
    with pytest.raises(jf.UnsupportedKinkError, match="sign"):
        jf.flow(p, jnp.ones((2, 2)), t1=1.0)


@pytest.mark.parametrize(
    "d,h,slots",
    [(3, None, 256), (40, 0.5, 256), (40, 0.5, 4)],
    ids=["reverse", "forward", "forward-closest-slots"],
)
def test_slot_jacobian_is_the_selection_gradient_s_change_from_the_natural_piece(d, h, slots):
    r"""`KinkAnalysis.jac` column $(k, r)$ is $\partial_t \nabla_x F$ along moving slot $k$'s
    weight from its natural piece to piece $r$ (zero for the natural piece): checked
    against central differences of the selection gradient and against the plain
    Jacobian of `grad_at` minus its natural column, for kinks of two (abs, relu) and
    three pieces (max) in one function, computed in forward mode (d = 40, more inputs
    than columns) and in reverse mode (d = 3). With fewer slots than kinks (the closest
    first) only the tied slots' columns are formed (the QPs use no other)."""
    from jaxflow._nonsmooth.options import MinNormOptions
    from jaxflow._nonsmooth.slots import KinkAnalysis

    def f(x):
        kinks = jnp.abs(x[0] * x[1] - 1.0) + jnp.max(jnp.stack([x[0], x[1] ** 2, x[2] - x[0]]))
        relu = jnp.sum(jax.nn.relu(jnp.outer(x[:3], x[:3]) - 0.3))
        return kinks + relu + jnp.sum(jnp.sin(x) ** 2) * jnp.sum(x**2)

    x = jnp.linspace(0.3, 1.2, d).at[:3].set(jnp.array([1.0, 1.0, 2.0]))
    prog, opts, eps = KinkProgram(f, d, jnp.float64), MinNormOptions(max_active=slots), 1e-6
    probes = [(0, 1), (1, 2), (-1, 0)]  # (slot, piece) for central differences
    by_score = []

    @jax.jit
    def analyse(x):
        an = KinkAnalysis(prog, x, opts, h)
        by_score.append(an.by_score)
        plain = jax.jacfwd(an.grad_at)(jnp.zeros((an.k, an.r_max)))
        fd = []
        for slot, piece in probes:
            t = jnp.zeros((an.k, an.r_max)).at[slot, piece].add(eps)
            t = t.at[slot].add(-eps * an.lam0[slot])
            fd.append((an.grad_at(t) - an.grad_at(-t)) / (2 * eps))
        return an.jac, plain, an.lam0, an.s_valid, jnp.stack(fd, -1)

    jac, plain, nat, valid, fd = map(np.asarray, analyse(x))
    d_, k, r_max = jac.shape
    assert d_ == d and r_max == 3
    assert by_score == [slots < 11]  # 11 kink groups: abs, max, 9 relu
    nat = nat.astype(bool)
    np.testing.assert_array_equal(jac[:, nat], 0.0)
    ref = plain - np.einsum("dkr,kr->dk", plain, nat)[:, :, None]
    tied = valid.sum(-1) > 1
    assert 2 <= tied.sum() <= k
    if by_score[0]:
        assert tied[: tied.sum()].all()  # the closest slots come first
    used = tied if by_score[0] else slice(None)
    np.testing.assert_allclose(jac[:, used], ref[:, used], rtol=1e-12, atol=1e-12)
    assert np.abs(ref).max() > 0.1  # the kinks' pieces move the gradient
    for j, (slot, piece) in enumerate(probes):
        if by_score[0] and not tied[slot]:
            continue
        np.testing.assert_allclose(jac[:, slot, piece], fd[:, j], rtol=1e-6, atol=1e-8)
