"""Shared by tests/ff: the float64 helpers and one tiny two-layer DTG-CNN, built and stepped once
per session (its compiled programs are the costly part of these tests)."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff import cnn, rules

K, B = 3, 4
# two layers (depth is not the point): a pool after layer 0, the concat classifier on layer 1
TINY_CNN = dict(widths=(3, 4), pool_after=(0,), image=(4, 4), in_channels=2)


def close(a, b, rtol=1e-12, atol=1e-14):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def data(shape, seed=0):
    key = jax.random.key(seed)
    x = jax.random.uniform(jax.random.fold_in(key, 1), (B, *shape), jnp.float64)
    return x, jnp.asarray([0, 1, 2, 1])


@pytest.fixture(scope="session")
def tiny_cnn():
    """The DTG-CNN, its float64 params, a dtg_ff state, a batch and the jitted step's output."""
    model = cnn.dtg_cnn(K, **TINY_CNN)
    key = jax.random.key(1)
    params = model.init(key, jnp.float64)  # eagerly: jax.random's programs are cached by shape
    rule = rules.get("dtg_ff", model)
    state = rule.init(jax.random.fold_in(key, 2), params)
    x, y = data(model.backbone.input_shape)
    _, out = jax.jit(rule.step)(params, state, x, y)
    return SimpleNamespace(model=model, rule=rule, params=params, state=state, x=x, y=y, out=out)
