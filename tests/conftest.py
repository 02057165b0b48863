"""Test-wide settings: float64 is enabled so exactness tests can run in double precision;
float32 tests request float32 explicitly.

One persistent compilation cache serves a whole test session: its pytest-xdist workers and the
subprocesses that tests start (resume-after-SIGKILL, 8-device runs) inherit its directory through
the environment, so a program that several tests compile (a study's smoke preset run again to
test resuming, re-printing or another device count) is compiled once. The directory is fresh per
session (CI's cold compile times are what the suite measures) and removed at its end; the
executables it returns are XLA's own, memory_analysis and as_text included."""

import os
import shutil
import tempfile

_OWNER = "CREDIT_TEST_JAX_CACHE" not in os.environ
if _OWNER:
    os.environ["CREDIT_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="credit-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["CREDIT_TEST_JAX_CACHE"]
MIN_COMPILE_S = 0.1  # programs that compile faster are not worth a cache entry
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(MIN_COMPILE_S)

import jax  # noqa: E402  (after the cache's environment, which jax reads at import)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)


def pytest_unconfigure(config):
    if _OWNER:
        shutil.rmtree(os.environ["CREDIT_TEST_JAX_CACHE"], ignore_errors=True)
