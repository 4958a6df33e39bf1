import os

# Keep XLA to the CPU and quiet in tests; float64 on for reference comparisons.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# Mixed-precision arithmetic must be explicit in the package (a float32 run stays float32).
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Programs lowered for compilation, counted through JAX's monitoring events (a lowering
# precedes every compilation, whether or not the persistent cache then has the binary).
_LOWERINGS = [0]


def _count_lowerings(event, duration_secs, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _LOWERINGS[0] += 1


jax.monitoring.register_event_duration_secs_listener(_count_lowerings)


@pytest.fixture
def compilations():
    """A callable: how many programs JAX lowered for compilation since it was created.

    `before = compilations(); ...; assert compilations() == before` checks that nothing
    was (re)compiled in between.
    """
    start = _LOWERINGS[0]
    return lambda: _LOWERINGS[0] - start


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic per test."""
    state = {"i": 0}

    def _getkey():
        state["i"] += 1
        return jax.random.fold_in(jax.random.key(1234), state["i"])

    return _getkey
