"""`flow(..., save_states=S)`: full states at the checkpoints for a subsample."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxflow
from jaxflow import problems


def test_states_follow_closed_form_and_match_checkpoint_series():
    """f = |x|^2 / 2: x(t) = x0 exp(-t); the saved states reproduce cp_norm and cp_f."""
    p = jaxflow.Problem(lambda x: 0.5 * jnp.sum(x**2), dim=3)
    x0 = jnp.array([[1.0, -2.0, 0.5], [0.3, 0.2, 0.1], [2.0, 2.0, 2.0]])
    ctrl = diffrax.PIDController(rtol=1e-10, atol=1e-12)
    res = jaxflow.flow(p, x0, t1=5.0, save_states=2, stepsize_controller=ctrl,
                       solver=diffrax.Tsit5(), stop_at_convergence=False)
    ts = np.asarray(res.ts)
    assert res.cp_x.shape == (2, ts.size, 3)
    expected = np.asarray(x0[:2])[:, None, :] * np.exp(-ts)[None, :, None]
    np.testing.assert_allclose(res.cp_x, expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(res.cp_x, axis=-1), res.cp_norm[:2], rtol=1e-12)
    np.testing.assert_allclose(
        jax.vmap(jax.vmap(p.f_flat))(res.cp_x), res.cp_f[:2], rtol=1e-12
    )
    # The run is otherwise unchanged.
    plain = jaxflow.flow(p, x0, t1=5.0, stepsize_controller=ctrl, solver=diffrax.Tsit5(),
                         stop_at_convergence=False)
    assert plain.cp_x is None
    np.testing.assert_array_equal(plain.x, res.x)
    assert res[:1].cp_x is None


def test_states_are_nan_after_stop_and_capped_at_n():
    p = problems.get("matrix-completion")
    x0 = p.sample(jax.random.key(0), 3, jnp.float64)
    res = jaxflow.flow(p, x0, t1=1e3, save_states=10)
    assert res.cp_x.shape[0] == 3
    for i in range(3):
        ok = np.isfinite(np.asarray(res.cp_norm[i]))
        assert np.all(np.isfinite(np.asarray(res.cp_x[i])[ok]))
        assert np.all(np.isnan(np.asarray(res.cp_x[i])[~ok]))


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_bad_save_states(bad):
    p = problems.get("unbounded-trajectory")
    with pytest.raises(ValueError, match="save_states"):
        jaxflow.flow(p, jnp.ones((2, 1)), t1=1.0, save_states=bad)
