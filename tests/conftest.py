"""Test configuration: float64 everywhere (tests compare to references), and
seeded hypothesis profiles so CI is reproducible."""

import jax
import pytest
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "default",
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    derandomize=False,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("default")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop each test module's compiled programs when it ends.

    XLA keeps the machine code of every CPU executable in about six memory
    maps; a whole test run compiles some ten thousand programs, which comes
    close to Linux's default limit of 65,530 maps per process (past it, mmap
    fails inside the compiler and the process crashes)."""
    yield
    jax.clear_caches()
