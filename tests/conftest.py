"""Shared test set-up: 4 forced CPU devices, runtime type checking of `respax`, hypothesis profiles.

Everything here runs before JAX is imported, so the device count and the import hook take effect.
"""

import contextlib
import os

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
