"""The trace engine equals jax.grad and generic forward mode on the local objective."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lru_local
from lru_local import eligibility
from tests.lru_local.compare import cosines, max_relative_errors, online_sums

# (depth, d_model, d_state, batch, length, seed): several random sizes and seeds per depth.
CASES = [
    (1, 5, 4, 2, 12, 0),
    (1, 8, 7, 3, 9, 1),
    (2, 6, 5, 2, 14, 2),
    (2, 4, 9, 1, 11, 3),
    (3, 7, 6, 3, 10, 4),
    (5, 5, 3, 2, 12, 5),
    (5, 3, 8, 2, 8, 6),
]


def _problem(depth, d_model, d_state, batch, length, seed, dtype=jnp.float64, activation="none"):
    cfg = lru_local.Config(
        d_model=d_model, d_state=d_state, depth=depth, noise_std=0.3, activation=activation
    )
    k_params, k_tokens, k_noise = jax.random.split(jax.random.key(seed), 3)
    params = lru_local.init(k_params, cfg, dtype=dtype)
    tokens = jax.random.randint(k_tokens, (batch, length), 0, cfg.vocab, dtype=jnp.int32)
    return cfg, params, tokens, k_noise


GELU_CASES = [(1, 5, 4, 2, 12, 10), (3, 6, 5, 2, 10, 11), (5, 4, 6, 2, 9, 12)]


@pytest.mark.parametrize(
    "case, activation",
    [(c, "none") for c in CASES] + [(c, "gelu") for c in GELU_CASES],
    ids=lambda c: "L{}_H{}_N{}_B{}_T{}_s{}".format(*c) if isinstance(c, tuple) else c,
)
def test_trace_engine_matches_autodiff_and_jvp_float64(case, activation):
    """Also with a GELU readout φ: φ acts after the state, so the traces stay exact."""
    cfg, params, tokens, key = _problem(*case, activation=activation)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg)
    ref_losses, ref_grads = lru_local.local_grads_autodiff(params, tokens, key, cfg)
    jvp_losses, jvp_grads = lru_local.local_grads_jvp(params, tokens, key, cfg)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    chex.assert_shape(losses, (cfg.depth,))
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    np.testing.assert_allclose(jvp_losses, ref_losses, rtol=1e-12)
    for name, err in max_relative_errors(grads, ref_grads).items():
        assert err <= 1e-9, f"trace vs autodiff {name}: {err:.2e}"
    for name, err in max_relative_errors(jvp_grads, ref_grads).items():
        assert err <= 1e-9, f"jvp vs autodiff {name}: {err:.2e}"
    # The recurrent leaves must carry real signal, not agree trivially at zero.
    for layer in ref_grads["layers"]:
        for name in ("nu_log", "theta", "B_re", "B_im"):
            assert np.max(np.abs(layer[name])) > 1e-6


def test_trace_engine_matches_autodiff_float32_cosine():
    cfg, params, tokens, key = _problem(3, 32, 32, 4, 128, 7, dtype=jnp.float32)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg)
    _, ref_grads = lru_local.local_grads_autodiff(params, tokens, key, cfg)
    _, jvp_grads = lru_local.local_grads_jvp(params, tokens, key, cfg)
    assert losses.dtype == jnp.float32
    chex.assert_trees_all_equal_dtypes(grads, params)
    for name, cos in cosines(grads, ref_grads).items():
        assert cos >= 0.99999, f"trace vs autodiff {name}: cosine {cos:.7f}"
    for name, cos in cosines(jvp_grads, ref_grads).items():
        assert cos >= 0.99999, f"jvp vs autodiff {name}: cosine {cos:.7f}"


def test_local_grads_is_sum_of_online_steps():
    cfg, params, tokens, key = _problem(3, 6, 5, 2, 10, 8)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg)
    loss_sum, grad_sum, _ = online_sums(params, tokens, key, cfg)
    np.testing.assert_allclose(loss_sum, losses, rtol=1e-12)
    for name, err in max_relative_errors(grad_sum, grads).items():
        assert err <= 1e-12, f"{name}: {err:.2e}"


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunk_size_does_not_change_the_gradients(chunk):
    """T - 1 = 20 steps: chunk 4 divides it, chunk 7 pads the last chunk with 1 zero-weight step."""
    cfg, params, tokens, key = _problem(3, 5, 4, 2, 21, 10)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg, chunk=chunk)
    ref_losses, ref_grads = lru_local.local_grads_autodiff(params, tokens, key, cfg)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    for name, err in max_relative_errors(grads, ref_grads).items():
        assert err <= 1e-9, f"chunk={chunk} {name}: {err:.2e}"


def test_online_carry_is_constant_size_and_continues_across_chunks():
    """Streaming two halves with the carry kept equals the states of one pass over the whole."""
    cfg, params, tokens, key = _problem(2, 4, 3, 2, 9, 9)
    carry = lru_local.online_init(params, 2, cfg)
    shapes = jax.tree_util.tree_map(jnp.shape, carry)
    for t in range(tokens.shape[1] - 1):
        carry, _, _ = lru_local.online_step(
            params, carry, tokens[:, t], tokens[:, t + 1], jax.random.fold_in(key, t), cfg
        )
        assert jax.tree_util.tree_map(jnp.shape, carry) == shapes
    from lru_local import model

    _, _, s_last = model.stack_forward(params, tokens[:, :-1], local=True)
    for trace, s in zip(carry, s_last, strict=True):
        np.testing.assert_allclose(trace.s, s, rtol=1e-12, atol=1e-14)


def test_hand_computed_toy_one_unit_three_steps():
    """One real unit, λ = 0.5 (theta = 0), B = 1, u = 1, 2, 3; L = Re s1 + Re s2 + (Re + Im) s3.

    State:   s1 = 0.5·0 + 1 = 1      s2 = 0.5·1 + 2 = 2.5        s3 = 0.5·2.5 + 3 = 4.25
    e^λ:     e1 = 0.5·0 + s0 = 0     e2 = 0.5·0 + s1 = 1          e3 = 0.5·1 + s2 = 3
             (check: s3 = λ²u1 + λu2 + u3, ds3/dλ = 2λu1 + u2 = 3)
    e^B:     e1 = 1                  e2 = 0.5·1 + 2 = 2.5         e3 = 0.5·2.5 + 3 = 4.25
    δ_t = ∂L/∂Re s_t + i ∂L/∂Im s_t: δ1 = δ2 = 1, δ3 = 1 + i, so conj(δ3) = 1 - i.
    B:       z = Σ conj(δ_t) e^B_t = 1 + 2.5 + (1 - i)·4.25 = 7.75 - 4.25i
             ∂L/∂B_re = Re z = 7.75, ∂L/∂B_im = -Im z = 4.25
    λ:       w = λ Σ conj(δ_t) e^λ_t = 0.5·(0 + 1 + (1 - i)·3) = 2 - 1.5i
             ∂L/∂theta = -Im w = 1.5                  (dλ/dθ = iλ: only Im s3 feels θ, 0.5·3)
             ∂L/∂nu_log = Re w · (-exp(nu_log)) = 2·(-ln 2) = -1.3862944   (ν = -ln λ = ln 2)
    """
    layer = {
        "nu_log": jnp.array([math.log(math.log(2.0))]),
        "theta": jnp.array([0.0]),
        "B_re": jnp.array([[1.0]]),
        "B_im": jnp.array([[0.0]]),
    }
    trace = eligibility.layer_trace_init(1, 1, 1, jnp.float64)
    deltas = [1.0, 1.0, 1.0 + 1.0j]
    expected_s, expected_e_lam, expected_e_b = [1.0, 2.5, 4.25], [0.0, 1.0, 3.0], [1.0, 2.5, 4.25]
    total = None
    for t, u in enumerate([1.0, 2.0, 3.0]):
        trace = eligibility.layer_trace_update(layer, trace, jnp.array([[u]]))
        np.testing.assert_allclose(trace.s[0, 0], expected_s[t], atol=1e-14)
        np.testing.assert_allclose(trace.e_lam[0, 0], expected_e_lam[t], atol=1e-14)
        np.testing.assert_allclose(trace.e_B[0, 0, 0], expected_e_b[t], atol=1e-14)  # [N, B, H]
        g = eligibility.layer_trace_grads(layer, trace, jnp.array([[deltas[t]]]))
        total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
    np.testing.assert_allclose(total["B_re"][0, 0], 7.75, atol=1e-14)
    np.testing.assert_allclose(total["B_im"][0, 0], 4.25, atol=1e-14)
    np.testing.assert_allclose(total["theta"][0], 1.5, atol=1e-14)
    np.testing.assert_allclose(total["nu_log"][0], -2.0 * math.log(2.0), atol=1e-14)
