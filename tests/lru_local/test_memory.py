"""Compiled temp memory (exact, from XLA's buffer assignment): traces flat in T, BPTT grows."""

import jax
import jax.numpy as jnp

import lru_local

CFG = lru_local.Config(d_model=16, d_state=16, depth=2)


def _temp_bytes(fn, length, *args):
    params = lru_local.init(jax.random.key(0), CFG)
    tokens = jnp.zeros((2, length), jnp.int32)
    compiled = jax.jit(fn, static_argnames="cfg").lower(params, tokens, *args, cfg=CFG).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_local_grads_temp_memory_is_flat_in_sequence_length():
    key = jax.random.key(1)
    sizes = {t: _temp_bytes(lru_local.local_grads, t, key) for t in (256, 4096, 65536)}
    assert min(sizes.values()) > 0
    assert max(sizes.values()) <= 1.05 * min(sizes.values()), sizes


def test_bptt_temp_memory_grows_with_sequence_length():
    sizes = {t: _temp_bytes(lru_local.bptt_grads, t) for t in (256, 4096)}
    assert sizes[4096] >= 8 * sizes[256], sizes
    local = _temp_bytes(lru_local.local_grads, 4096, jax.random.key(1))
    assert sizes[4096] > 10 * local, (sizes, local)
