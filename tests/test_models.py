"""Model losses as problems: `matrix-completion-nxn`, `mlp`, and an equinox model."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow as jf
from jaxflow import problems


def _fd_grad_check(p, x, h=1e-6):
    g = np.asarray(jax.grad(p.f_flat)(x))
    e = np.eye(p.dim)
    f = jax.vmap(p.f_flat)
    fd = (np.asarray(f(x + h * e)) - np.asarray(f(x - h * e))) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7 * (1 + np.abs(g).max()))


def test_completion_smallest_instance_is_half_example_1_1(getkey):
    p = problems.get("matrix-completion-nxn", n=2, r=1, pattern="bidiagonal", target="ones")
    ex = problems.get("matrix-completion")
    assert p.dim == 4 and p.facts["example_1_1"]
    x = p.sample(getkey(), 16, jnp.float64)
    np.testing.assert_allclose(np.asarray(jax.vmap(p.f_flat)(x)),
                               0.5 * np.asarray(jax.vmap(ex.f_flat)(x)), rtol=1e-14)


def test_completion_data_minimum_and_gradient(getkey):
    p = problems.get("matrix-completion-nxn", n=6, r=2, rate=0.5, seed=4)
    m, mask = p.data["M"], p.data["mask"]
    assert np.linalg.matrix_rank(m) == 2 and set(np.unique(mask)) <= {0.0, 1.0}
    assert p.facts["observed"] == int(mask.sum())
    # Same seed, same data; another seed, other data.
    np.testing.assert_array_equal(
        problems.get("matrix-completion-nxn", n=6, r=2, rate=0.5, seed=4).data["M"], m)
    assert not np.allclose(problems.get("matrix-completion-nxn", n=6, r=2, seed=5).data["M"], m)
    # The global minimum 0 is attained at a factorisation of M.
    u, s, vt = np.linalg.svd(m)
    x = u[:, :2] * np.sqrt(s[:2])
    y = vt[:2].T * np.sqrt(s[:2])
    flat = p.ravel({"X": jnp.asarray(x), "Y": jnp.asarray(y)})
    assert float(p.f_flat(flat)) < 1e-20
    assert float(jnp.linalg.norm(jax.grad(p.f_flat)(flat))) < 1e-9
    _fd_grad_check(p, p.sample(getkey(), 1, jnp.float64)[0])


def test_completion_layouts_compute_the_same_loss(getkey):
    """The sparse layout (observed entries gathered) against the dense masked product:
    same f, gradient and Hessian-vector products in float64; `auto` takes the sparse
    one below n^2 / 30 observed entries."""
    kw = dict(n=12, r=3, rate=0.2, seed=2)
    dense = problems.get("matrix-completion-nxn", layout="dense", **kw)
    sparse = problems.get("matrix-completion-nxn", layout="sparse", **kw)
    assert problems.get("matrix-completion-nxn", **kw).facts["layout"] == "dense"
    assert problems.get("matrix-completion-nxn", n=60, r=1, rate=0.02).facts["layout"] == "sparse"
    x = dense.sample(getkey(), 4, jnp.float64)
    u = jax.random.normal(getkey(), x.shape, jnp.float64)
    np.testing.assert_allclose(np.asarray(jax.vmap(sparse.f_flat)(x)),
                               np.asarray(jax.vmap(dense.f_flat)(x)), rtol=1e-13)

    def hvp(p):
        g = jax.grad(p.f_flat)
        return jax.vmap(lambda x, u: jax.jvp(g, (x,), (u,)))(x, u)

    for a, b in zip(hvp(sparse), hvp(dense), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="layout"):
        problems.get("matrix-completion-nxn", layout="csr")


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "cosine"])
def test_mlp_teacher_is_a_global_minimum(activation, getkey):
    p = problems.get("mlp", widths="3,5,2", activation=activation, n_samples=40, seed=1)
    teacher = jnp.asarray(p.data["teacher"])
    assert p.dim == teacher.size == (3 + 1) * 5 + (5 + 1) * 2
    assert float(p.f_flat(teacher)) < 1e-28
    assert p.nonsmooth == (activation == "relu")
    x = p.sample(getkey(), 1, jnp.float64)[0]
    assert float(p.f_flat(x)) > 1e-3
    if activation != "relu":
        assert float(jnp.linalg.norm(jax.grad(p.f_flat)(teacher))) < 1e-13
        _fd_grad_check(p, x)


def test_mlp_data_do_not_depend_on_the_process():
    """The targets are the teacher's outputs in float64 whatever JAX's x64 flag: a
    process with float32 defaults (a scan's worker) builds the same problem data."""
    import subprocess
    import sys

    kw = dict(widths="3,5,2", activation="sigmoid", n_samples=40, seed=1)
    p = problems.get("mlp", **kw)
    code = ("import sys, jax; jax.config.update('jax_enable_x64', False)\n"
            "from jaxflow import problems\n"
            f"sys.stdout.buffer.write(problems.get('mlp', **{kw!r}).data['y'].tobytes())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    y32 = np.frombuffer(out.stdout, np.float64).reshape(p.data["y"].shape)
    assert p.data["y"].dtype == np.float64
    np.testing.assert_array_equal(y32, p.data["y"])
    # The sigmoid as 1 / (1 + e^-z), the teacher layer by layer, in numpy.
    w = jax.tree.map(np.asarray, p.unravel(jnp.asarray(p.data["teacher"])))
    h = 1.0 / (1.0 + np.exp(-(p.data["x"] @ w[0]["w"] + w[0]["b"])))
    np.testing.assert_allclose(p.data["y"], h @ w[1]["w"] + w[1]["b"], rtol=1e-13, atol=1e-15)


def test_mlp_logistic_loss(getkey):
    p = problems.get("mlp", widths=[2, 4, 1], activation="tanh", loss="logistic",
                     n_samples=30)
    assert set(np.unique(p.data["y"])) <= {-1.0, 1.0}
    teacher = jnp.asarray(p.data["teacher"])
    # The teacher separates the data; scaling its last layer drives the loss to 0.
    f_t = float(p.f_flat(teacher))
    assert 0 < f_t < np.log(2.0)
    _fd_grad_check(p, p.sample(getkey(), 1, jnp.float64)[0])


@pytest.mark.parametrize("bad, match", [
    (dict(widths=[3]), "widths"), (dict(widths="3,x"), "widths"),
    (dict(activation="gelu"), "activation"), (dict(loss="hinge"), "loss"),
    (dict(widths=[2, 3, 2], loss="logistic"), "one output"),
])
def test_mlp_bad_parameters_are_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        problems.get("mlp", **bad)


def test_completion_bad_parameters_are_named():
    with pytest.raises(ValueError, match="rate"):
        problems.get("matrix-completion-nxn", rate=1.5)
    with pytest.raises(ValueError, match="pattern"):
        problems.get("matrix-completion-nxn", pattern="checkerboard")


def test_equinox_model_as_example_pytree_scans_end_to_end(getkey):
    """An `eqx.nn.MLP`, split into its arrays (the `example`) and the rest, flows like
    the registry's `mlp` on the same data, and from near the teacher converges to it."""
    ref = problems.get("mlp", widths="2,3,1", activation="tanh", n_samples=20, seed=2)
    xs, ys = jnp.asarray(ref.data["x"]), jnp.asarray(ref.data["y"])
    model = eqx.nn.MLP(2, 1, width_size=3, depth=1, activation=jnp.tanh, key=getkey())
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params):
        net = eqx.combine(params, static)
        pred = jax.vmap(net)(xs.astype(params.layers[0].weight.dtype))
        return 0.5 * jnp.mean((pred - ys) ** 2)

    p = jf.Problem(loss, example=params, name="eqx-mlp")
    assert p.dim == ref.dim
    # The registry's teacher, moved into the equinox layout (weights transposed).
    t = ref.unravel(jnp.asarray(ref.data["teacher"]))
    teacher = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias, m.layers[1].weight, m.layers[1].bias),
        params, (t[0]["w"].T, t[0]["b"], t[1]["w"].T, t[1]["b"]))
    assert float(loss(teacher)) < 1e-28
    x_any = p.sample(getkey(), 1, jnp.float64)[0]
    assert float(loss(p.unravel(x_any))) == pytest.approx(
        float(ref.f_flat(ref.ravel(_to_registry(p.unravel(x_any))))), rel=1e-12)
    # Same flow as the registry's problem, in the other layout; f decreases.
    starts = p.sample(getkey(), 3, jnp.float64)
    ref_starts = jnp.stack([ref.ravel(_to_registry(p.unravel(s))) for s in starts])
    # Tsit5: the test is about the model's pytree, not the (slower to compile) default.
    res = jf.flow(p, starts, t1=5.0, solver=diffrax.Tsit5())
    res_ref = jf.flow(ref, ref_starts, t1=5.0, solver=diffrax.Tsit5())
    np.testing.assert_allclose(np.asarray(res.f), np.asarray(res_ref.f), rtol=1e-7)
    assert np.all(np.asarray(res.f) < np.asarray(jax.vmap(p.f_flat)(starts)))
    back = eqx.combine(p.unravel(res.x[0]), static)
    assert isinstance(back, eqx.nn.MLP)
    np.testing.assert_allclose(np.asarray(ref.ravel(_to_registry(p.unravel(res.x[0])))),
                               np.asarray(res_ref.x[0]), rtol=1e-5, atol=1e-7)


def _to_registry(params):
    return [{"b": layer.bias, "w": layer.weight.T} for layer in params.layers]


def test_flax_model_as_example_pytree_scans_end_to_end(getkey):
    """A `flax.linen` MLP's `params` are the `example`: its flat layout (leaves sorted by
    key: `Dense_0` bias, kernel, `Dense_1` ...) is the registry `mlp`'s, so the loss, the
    flow and the teacher carry over coordinate for coordinate. Flax is in the test extra,
    not a jaxflow dependency (skipped where it is not installed)."""
    nn = pytest.importorskip("flax.linen")
    ref = problems.get("mlp", widths="2,3,1", activation="tanh", n_samples=20, seed=2)
    xs, ys = jnp.asarray(ref.data["x"]), jnp.asarray(ref.data["y"])

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            hidden = jnp.tanh(nn.Dense(3)(x))  # created first: "Dense_0"
            return nn.Dense(1)(hidden)

    model = MLP()
    params = model.init(getkey(), xs[:1].astype(jnp.float32))["params"]

    def loss(params):
        dtype = params["Dense_0"]["kernel"].dtype
        pred = model.apply({"params": params}, xs.astype(dtype))
        return 0.5 * jnp.mean((pred - ys.astype(dtype)) ** 2)

    p = jf.Problem(loss, example=params, name="flax-mlp")
    assert p.dim == ref.dim
    teacher = jnp.asarray(ref.data["teacher"], jnp.float64)
    assert float(p.f_flat(teacher)) < 1e-28
    starts = p.sample(getkey(), 3, jnp.float64)
    np.testing.assert_allclose(np.asarray(jax.vmap(p.f_flat)(starts)),
                               np.asarray(jax.vmap(ref.f_flat)(starts)), rtol=1e-12)
    res = jf.flow(p, starts, t1=5.0, solver=diffrax.Tsit5())
    res_ref = jf.flow(ref, starts, t1=5.0, solver=diffrax.Tsit5())
    np.testing.assert_allclose(np.asarray(res.x), np.asarray(res_ref.x), rtol=1e-9, atol=1e-12)
    assert np.all(np.asarray(res.f) < np.asarray(jax.vmap(p.f_flat)(starts)))
    back = p.unravel(res.x[0])
    assert set(back) == {"Dense_0", "Dense_1"} and back["Dense_0"]["kernel"].shape == (2, 3)
