import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf


def quad(x):
    return jnp.sum(x**2)


def test_flat_and_pytree_problems_agree():
    p1 = jf.Problem(quad, dim=3)
    p2 = jf.Problem(lambda t: jnp.sum(t["a"] ** 2) + jnp.sum(t["b"] ** 2),
                    example={"a": jnp.zeros(1), "b": jnp.zeros((2,))})
    assert p1.dim == p2.dim == 3
    x = jnp.array([1.0, 2.0, 3.0])
    assert float(p1.f_flat(x)) == float(p2.f_flat(x)) == 14.0
    tree = p2.unravel(x)
    np.testing.assert_array_equal(p2.ravel(tree), x)


def test_unravel_keeps_input_dtype():
    p = jf.Problem(quad, example=jnp.zeros(2, jnp.float32))
    assert p.unravel(jnp.ones(2, jnp.float64)).dtype == jnp.float64


def test_samplers_shapes_and_ranges(getkey):
    p = jf.Problem(quad, dim=4, sampler=jf.Uniform(-2.0, 3.0))
    x = p.sample(getkey(), 1000, jnp.float64)
    assert x.shape == (1000, 4) and x.dtype == jnp.float64
    assert float(x.min()) >= -2.0 and float(x.max()) <= 3.0
    p = jf.Problem(quad, dim=2, sampler=jf.Normal(1.0, 0.5))
    x = p.sample(getkey(), 20000, jnp.float64)
    np.testing.assert_allclose(np.mean(x, 0), 1.0, atol=0.02)
    np.testing.assert_allclose(np.std(x, 0), 0.5, atol=0.02)
    p = jf.Problem(quad, dim=2, sampler=lambda key, n: jax.random.normal(key, (n, 2)))
    assert p.sample(getkey(), 5).shape == (5, 2)


def test_sampler_per_coordinate_bounds(getkey):
    p = jf.Problem(quad, dim=2, sampler=jf.Uniform([0.0, 10.0], [1.0, 11.0]))
    x = np.asarray(p.sample(getkey(), 100))
    assert x[:, 0].max() <= 1.0 and x[:, 1].min() >= 10.0


# ---------------------------------------------------------------- bad input, named
@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: jf.Problem(lambda x: x * 2, dim=3), ValueError, ["scalar", "shape (3,)"]),
        (lambda: jf.Problem(lambda x: jnp.sum(x).astype(jnp.complex128) * 1j, dim=3), TypeError, ["complex"]),
        (lambda: jf.Problem(quad, example=jnp.zeros(3, jnp.int32)), TypeError, ["int32", "float"]),
        (lambda: jf.Problem(quad, example=jnp.zeros(3, jnp.complex64)), TypeError, ["complex"]),
        (lambda: jf.Problem(quad, dim=3, sampler=jf.Uniform(float("nan"), 1.0)), ValueError, ["low", "NaN"]),
        (lambda: jf.Problem(quad, dim=3, sampler=jf.Uniform(-1.0, float("inf"))), ValueError, ["high", "infinity"]),
        (lambda: jf.Problem(quad, dim=3, sampler=jf.Normal(0.0, float("nan"))), ValueError, ["scale"]),
        (lambda: jf.Problem(quad, dim=3, sampler=jf.Uniform(1.0, -1.0)), ValueError, ["low < high"]),
        (lambda: jf.Problem(quad, dim=3, sampler=jf.Uniform([0.0, 0.0], [1.0, 1.0])), ValueError, ["shape (2,)", "3 flat"]),
        (
            lambda: jf.Problem(quad, dim=3, sampler=lambda k, n: jax.random.normal(k, (n, 4))),
            ValueError,
            ["sampler", "(3, 4)"],
        ),
        (lambda: jf.Problem(quad), ValueError, ["example", "dim"]),
        (lambda: jf.Problem(quad, dim=0), ValueError, ["dim"]),
        (lambda: jf.Problem(lambda x: x @ jnp.ones(4), dim=3), ValueError, ["failed"]),
        (lambda: jf.Problem("not a function", dim=3), TypeError, ["callable"]),
    ],
)
def test_bad_problem_definitions_name_the_problem(make, exc, words):
    with pytest.raises(exc) as info:
        make()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_bad_x0_shape_is_named():
    p = jf.Problem(quad, dim=3)
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        jf.flow(p, jnp.zeros((5, 4)), t1=1.0)
    with pytest.raises(ValueError, match=r"x0\[None\]"):
        jf.flow(p, jnp.zeros(3), t1=1.0)
    with pytest.raises(TypeError, match="floating"):
        jf.flow(p, jnp.zeros((2, 3), jnp.int32), t1=1.0)
    with pytest.raises(ValueError, match="t1"):
        jf.flow(p, jnp.zeros((2, 3)), t1=-1.0)


def test_bad_options_are_named():
    import diffrax

    p = jf.Problem(quad, dim=2)
    x0 = jnp.ones((2, 2))
    with pytest.raises(ValueError, match="dt0"):
        jf.flow(p, x0, t1=1.0, solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize())
    with pytest.raises(ValueError, match="error estimate"):
        jf.flow(p, x0, t1=1.0, solver=diffrax.Euler())
    with pytest.raises(TypeError, match="diffrax solver"):
        jf.flow(p, x0, t1=1.0, solver=object())
    with pytest.raises(ValueError, match="escape_radius"):
        jf.flow(p, x0, t1=1.0, escape_radius=0.0)


# --------------------------------------------------------------------------- immutability
def test_problem_refuses_attribute_assignment():
    p = jf.Problem(quad, dim=3, name="q")
    for name, value in [("name", "other"), ("dim", 4), ("data", {}), ("new_attribute", 1)]:
        with pytest.raises(AttributeError, match="immutable"):
            setattr(p, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del p.f
    assert p.name == "q" and p.dim == 3 and not hasattr(p, "new_attribute")


def test_problem_data_is_a_read_only_mapping():
    m = np.arange(4.0)
    p = jf.Problem(quad, dim=3, data={"M": m})
    assert p.data["M"] is m and dict(p.data) == {"M": m}
    with pytest.raises(TypeError):
        p.data["M"] = np.zeros(4)
    assert dict(jf.Problem(quad, dim=3).data) == {}
    assert float(jf.problems.get("nonsmooth-factorization", m=2, n=2).data["M"].sum()) != 0.0


def test_problem_pickles_with_its_data():
    import pickle

    p = jf.Problem(jnp.sum, dim=2, data={"M": np.ones(2)})
    q = pickle.loads(pickle.dumps(p))
    np.testing.assert_array_equal(q.data["M"], np.ones(2))
    with pytest.raises(AttributeError, match="immutable"):
        q.name = "other"
    assert float(q.f_flat(jnp.ones(2))) == 2.0


def test_field_is_cached_per_problem_without_keeping_it_alive():
    import gc
    import weakref

    from jaxflow._field import _FIELDS
    from jaxflow._field_choice import field_for

    for nonsmooth in (False, True):
        p = jf.Problem(lambda x: jnp.sum(jnp.abs(x)), dim=3, nonsmooth=nonsmooth)
        assert field_for(p) is field_for(p)
        assert isinstance(field_for(p), jf.MinNormField if nonsmooth else jf.GradientField)
        assert p in _FIELDS
        ref = weakref.ref(p)
        n = len(_FIELDS)
        del p
        gc.collect()
        assert ref() is None
        assert len(_FIELDS) == n - 1
