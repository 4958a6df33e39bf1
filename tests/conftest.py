import os

# Keep XLA to the CPU and quiet in tests; float64 on for reference comparisons.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic per test."""
    state = {"i": 0}

    def _getkey():
        state["i"] += 1
        return jax.random.fold_in(jax.random.key(1234), state["i"])

    return _getkey
