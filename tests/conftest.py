import os

# Keep XLA to the CPU and quiet in tests; float64 on for reference comparisons.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Cheaper XLA:CPU code generation for the suite (and the processes it starts, which
# inherit the environment): the suite spends ~60 % of its time compiling small runs, and
# without the fusion emitters and LLVM's expensive passes the engine compiles in about
# half the time (Example 1.1: 3.0 -> 1.3 s) and runs 0-20 % slower; the whole suite took
# 413 s against 599 s with the default code generation, one run after the other on a
# 2-core Intel Xeon. Semantics are IEEE either way (no fast math), but roundings may
# differ in the last bits, so results are compared within one codegen only. Properties that depend on how XLA vectorises (a trajectory bit for bit
# the same in any batch) are also tested with the default codegen users get (the
# `default_codegen` fixture). JAXFLOW_TEST_DEFAULT_CODEGEN=1 runs everything with it.
FAST_CODEGEN = ("--xla_cpu_use_fusion_emitters=false", "--xla_llvm_disable_expensive_passes=true")
# The same options as compiler options set back to XLA's defaults (per program, they take
# precedence over XLA_FLAGS).
DEFAULT_CODEGEN = (("xla_cpu_use_fusion_emitters", True),
                   ("xla_llvm_disable_expensive_passes", False))
if os.environ.get("JAXFLOW_TEST_DEFAULT_CODEGEN", "").strip().lower() in ("", "0", "false", "no"):
    _flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in FAST_CODEGEN if f not in _flags])

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# Mixed-precision arithmetic must be explicit in the package (a float32 run stays float32).
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Programs lowered for compilation, counted through JAX's monitoring events (a lowering
# precedes every compilation, whether or not the persistent cache then has the binary).
_LOWERED: list[str] = []
# The integration engine's programs (`jaxflow._engine`).
ENGINE_PROGRAMS = ("jit(_started)", "jit(_start)", "jit(_run)")


def _record_lowering(event, duration_secs, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _LOWERED.append(str(kwargs.get("fun_name", "")))


jax.monitoring.register_event_duration_secs_listener(_record_lowering)


@pytest.fixture
def compilations():
    """`compilations(name="engine")`: programs of that name (default: the integration
    engine's, `ENGINE_PROGRAMS`) JAX lowered for compilation since the fixture was created;
    `name=None` counts every program, eager operations included.

    `before = compilations(); ...; assert compilations() == before` checks that nothing
    was (re)compiled in between.
    """
    start = len(_LOWERED)

    def count(name: str | None = "engine") -> int:
        names = ENGINE_PROGRAMS if name == "engine" else (name,)
        return sum(1 for n in _LOWERED[start:] if name is None or n in names)

    return count


@pytest.fixture(scope="module")
def default_codegen():
    """The engine compiled with XLA's default code generation (what users run), whatever
    `FAST_CODEGEN` says: for modules whose assertions depend on how XLA vectorises
    (`pytestmark = pytest.mark.usefixtures("default_codegen")`)."""
    from jaxflow import _engine, _executables

    saved = _engine._engine_compiler_options
    extra = _executables.accepted_options(DEFAULT_CODEGEN)
    _engine._engine_compiler_options = lambda: saved() + extra
    _engine._programs.cache_clear()
    try:
        yield
    finally:
        _engine._engine_compiler_options = saved
        _engine._programs.cache_clear()


@pytest.fixture
def getkey():
    """A fresh PRNG key per call, deterministic per test."""
    state = {"i": 0}

    def _getkey():
        state["i"] += 1
        return jax.random.fold_in(jax.random.key(1234), state["i"])

    return _getkey


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


@pytest.fixture(autouse=True, scope="module")
def _bounded_memory_maps():
    """Every compiled XLA:CPU executable holds a few hundred memory maps, and the suite
    compiles thousands of programs: past the kernel's `vm.max_map_count` (65530 by
    default) LLVM aborts the process. After a module, when the count is high, the
    compiled programs are dropped (later modules compile what they need again)."""
    yield
    if _memory_maps() > 40_000:
        from jaxflow import _engine, _executables

        jax.clear_caches()
        _executables._LOADED.clear()
        _engine._CALLED.clear()
