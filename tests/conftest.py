"""Test-wide settings: float64 is enabled so exactness tests can run in double precision;
float32 tests request float32 explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
