"""Finite differences, depth-1 equivalence with BPTT, layer isolation, the forward pass."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lru_local
from lru_local import eligibility, model, reference
from tests.lru_local.compare import check_central_differences, max_relative_errors


def _setup(depth, d_model, d_state, batch, length, seed, activation="none"):
    cfg = lru_local.Config(
        d_model=d_model, d_state=d_state, depth=depth, noise_std=0.3, activation=activation
    )
    k_params, k_tokens, k_noise = jax.random.split(jax.random.key(seed), 3)
    params = lru_local.init(k_params, cfg, dtype=jnp.float64)
    tokens = jax.random.randint(k_tokens, (batch, length), 0, cfg.vocab, dtype=jnp.int32)
    return cfg, params, tokens, k_noise


@pytest.mark.parametrize("length, activation", [(16, "none"), (64, "none"), (16, "gelu")])
def test_central_finite_differences_every_parameter_kind(length, activation):
    """(L^ℓ(θ + h e_k) - L^ℓ(θ - h e_k)) / 2h for sampled coordinates of θ^ℓ vs local_grads."""
    cfg, params, tokens, key = _setup(3, 5, 4, 2, length, seed=length, activation=activation)
    _, grads = lru_local.local_grads(params, tokens, key, cfg)
    noise = reference._all_noise(key, 2, length - 1, cfg, jnp.float64)
    per_layer_losses = jax.jit(lambda p: reference.local_objective(p, tokens, noise, activation)[1])

    def layer_of(path):
        if path[0].key == "embed":
            return None
        return path[1].idx if path[0].key in ("layers", "heads") else cfg.depth - 1

    checked = check_central_differences(
        params, grads, per_layer_losses, layer_of, rng=np.random.default_rng(length), samples=3
    )
    assert {"nu_log", "theta", "B_re", "B_im", "C_re", "C_im", "D", "heads", "decoder"} <= checked


@pytest.mark.parametrize("seed, activation", [(0, "none"), (1, "none"), (2, "gelu")])
def test_depth_one_local_equals_bptt(seed, activation):
    cfg, params, tokens, key = _setup(1, 6, 5, 3, 20, seed, activation)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg)
    loss, bptt = lru_local.bptt_grads(params, tokens, cfg)
    np.testing.assert_allclose(losses[0], loss, rtol=1e-12)
    errors = max_relative_errors(grads, bptt)
    assert set(errors) >= {"['layers'][0]['B_re']", "['decoder']['W']"}
    for name, err in errors.items():
        assert err <= 1e-9, f"{name}: {err:.2e}"


def test_bptt_differs_from_local_beyond_depth_one():
    """The end-to-end gradient reaches the lower layers; the local one does not use it."""
    cfg, params, tokens, key = _setup(3, 6, 5, 3, 20, 0)
    _, local = lru_local.local_grads(params, tokens, key, cfg)
    _, bptt = lru_local.bptt_grads(params, tokens, cfg)
    lower_local = np.asarray(local["layers"][0]["B_re"]).ravel()
    lower_bptt = np.asarray(bptt["layers"][0]["B_re"]).ravel()
    cos = lower_local @ lower_bptt / np.linalg.norm(lower_local) / np.linalg.norm(lower_bptt)
    assert abs(cos) < 0.99
    assert np.max(np.abs(np.asarray(bptt["heads"][0]["W"]))) == 0.0


@pytest.mark.parametrize("depth", [2, 4])
def test_stop_gradients_isolate_layers(depth):
    """∂L^ℓ/∂θ^m = 0 for m ≠ ℓ (autodiff of each layer's loss alone) and ≠ 0 for m = ℓ."""
    cfg, params, tokens, key = _setup(depth, 5, 4, 2, 12, depth)
    noise = reference._all_noise(key, 2, 11, cfg, jnp.float64)
    for ell in range(depth):
        g = jax.grad(lambda p, ell=ell: reference.local_objective(p, tokens, noise)[1][ell])(params)
        for m in range(depth):
            owned = [g["layers"][m]]
            owned.append(g["decoder"] if m == depth - 1 else g["heads"][m])
            norm = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(owned))
            if m == ell:
                assert norm > 1e-6, f"layer {ell} gets no gradient from its own loss"
            else:
                assert norm == 0.0, f"L^{ell} reaches θ^{m}: max |grad| {norm}"
        assert float(jnp.max(jnp.abs(g["embed"]))) == 0.0


def test_apply_matches_naive_loop():
    cfg, params, tokens, _ = _setup(3, 4, 5, 2, 9, 3)
    logits = lru_local.apply(params, tokens, cfg)
    chex.assert_shape(logits, (2, 8, cfg.vocab))
    p = jax.tree_util.tree_map(np.asarray, params)
    expected = np.zeros((2, 8, cfg.vocab))
    for b in range(2):
        states = [np.zeros(cfg.d_state, complex) for _ in range(cfg.depth)]
        for t in range(8):
            u = p["embed"][int(tokens[b, t])]
            for ell, layer in enumerate(p["layers"]):
                lam = np.exp(-np.exp(layer["nu_log"]) + 1j * layer["theta"])
                B = layer["B_re"] + 1j * layer["B_im"]
                C = layer["C_re"] + 1j * layer["C_im"]
                states[ell] = lam * states[ell] + B @ u
                y = (C @ states[ell]).real + layer["D"] * u
                u = u + y
            expected[b, t] = y @ p["decoder"]["W"] + p["decoder"]["b"]
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)


def test_ring_initialisation():
    cfg = lru_local.Config(d_model=16, d_state=4096, depth=1, r_min=0.5, r_max=0.9, max_phase=1.0)
    layer = lru_local.init(jax.random.key(0), cfg, dtype=jnp.float64)["layers"][0]
    radius = np.abs(np.asarray(model.eigenvalues(layer)))
    assert radius.min() >= 0.5 - 1e-12 and radius.max() <= 0.9 + 1e-12
    # Uniform in |λ|²: the mean of |λ|² is (r_min² + r_max²) / 2 (std of the mean ≈ 0.002).
    np.testing.assert_allclose(np.mean(radius**2), (0.25 + 0.81) / 2, atol=0.01)
    phase = np.asarray(layer["theta"])
    assert phase.min() >= 0.0 and phase.max() <= 1.0
    # B rows carry the sqrt(1 - |λ|²) normalisation: E|B_i u|² = (1 - |λ_i|²)·|u|²/H.
    b_row_norm = np.sum(np.asarray(layer["B_re"]) ** 2 + np.asarray(layer["B_im"]) ** 2, axis=1)
    np.testing.assert_allclose(np.mean(b_row_norm / (1 - radius**2)), 1.0, atol=0.02)


def test_describe_losses_reports_bits_per_byte():
    out = lru_local.describe_losses(jnp.array([0.5, 0.25, np.log(2.0) * 3]))
    assert out["task_bpb"] == pytest.approx(3.0)
    assert out["layer1_denoise_mse"] == 0.5 and out["layer2_denoise_mse"] == 0.25
    assert out["total"] == pytest.approx(0.75 + np.log(2.0) * 3)
    assert eligibility.denoise_noise(
        jax.random.key(0), 3, lru_local.Config(depth=1), jnp.float32
    ).shape == (0, 3, 64)
