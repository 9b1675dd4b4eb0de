"""Shared test set-up: 4 forced CPU devices, runtime type checking of `respax`, hypothesis profiles,
strict dtype promotion (where the tests pass under it) and a persistent compilation cache.

Everything here runs before JAX is imported, so the device count and the import hook take effect.
`RESPAX_TEST_COMPILATION_CACHE=0` turns the compilation cache off (to time the tests without it).
"""

import contextlib
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=4").strip()

# jaxtyping + beartype check every annotated function of `respax` while the tests run.
from jaxtyping import install_import_hook  # noqa: E402

_hook = install_import_hook("respax", "beartype.beartype")

import hypothesis  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# Strict dtype promotion: a float32 array mixed with a float64 one, or a Python float with an int
# array, promotes silently under JAX's default rules and raises under strict ones, so library code
# must say which dtype it means. It is on for the test directories whose tests pass under it (see
# `_strict_promotion` below); `RESPAX_TEST_DTYPE_PROMOTION=strict` turns it on for every test.
_STRICT_DIRS = ("core", "curvature", "implicit_diff", "testing")
# Tests that run third-party code which mixes dtypes itself, under standard promotion.
_STANDARD_PROMOTION = {
    # optax.scale_by_lbfgs adds its int32 memory index to an int64 arange under x64.
    "tests/implicit_diff/test_implicit_diff_hypergradient.py::test_run_inner_optimizer": "optax",
    "tests/implicit_diff/test_implicit_diff_root.py::test_forward_and_reverse": "optax",
    "tests/implicit_diff/test_implicit_diff_root.py::test_closed_over_arrays": "optax",
    "tests/implicit_diff/test_implicit_diff_root.py::test_vmap_over_hyperparameters": "optax",
}
_ALL_STRICT = os.environ.get("RESPAX_TEST_DTYPE_PROMOTION") == "strict"

# Compiled programs are kept between test runs (the folder is ignored by git, as .pytest_cache is);
# only compilations slower than the threshold are stored, so the cache stays small.
_COMPILATION_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-cache"
if os.environ.get("RESPAX_TEST_COMPILATION_CACHE", "1") != "0":
    jax.config.update("jax_compilation_cache_dir", str(_COMPILATION_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

hypothesis.settings.register_profile("default", deadline=None, max_examples=25)
hypothesis.settings.register_profile(
    "ci", deadline=None, max_examples=25, derandomize=True, print_blob=True
)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")


@contextlib.contextmanager
def _x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def float64():
    """Turn on float64 for one test (numerics oracles), restoring the previous setting after."""
    with _x64():
        yield


@pytest.fixture(autouse=True)
def _float64_marker(request):
    """`@pytest.mark.float64` is the marker form of the `float64` fixture."""
    if request.node.get_closest_marker("float64") is None:
        yield
        return
    with _x64():
        yield


@pytest.fixture(autouse=True)
def _strict_promotion(request):
    """Run the test under strict dtype promotion where the suite passes under it."""
    nodeid = request.node.nodeid
    parts = pathlib.PurePosixPath(nodeid.split("::")[0]).parts
    strict = _ALL_STRICT or (len(parts) > 2 and parts[0] == "tests" and parts[1] in _STRICT_DIRS)
    if strict and not any(nodeid.startswith(prefix) for prefix in _STANDARD_PROMOTION):
        with jax.numpy_dtype_promotion("strict"):
            yield
    else:
        yield
