"""Goodness, temperature, margin, warm start, overlay and negative labels, by hand (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff import goodness as gd
from ff import mlp


def test_temperature_stays_in_its_range_and_starts_at_the_midpoint():
    alpha = jnp.asarray([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4])
    for t_min, t_max in [(0.5, 2.0), (0.1, 2.0)]:
        T = np.asarray(gd.temperature(alpha, t_min, t_max))
        assert T.min() >= t_min and T.max() <= t_max
        np.testing.assert_allclose(T[[0, -1]], [t_min, t_max], rtol=1e-12)
        # α = 0 at init: T = (T_min + T_max) / 2 = 1.25 (CNN) / 1.05 (MLP)
        assert T[3] == pytest.approx((t_min + t_max) / 2, rel=1e-14)
    with pytest.raises(ValueError, match="0 < t_min <= t_max"):
        gd.temperature(0.0, 2.0, 0.5)


def test_warm_start_hand_checked_in_both_branches():
    # ḡ = 25 > 20: θ_0 = ḡ itself (softplus(25) = 25 + 1.4e-11)
    assert float(gd.warm_start_theta0(25.0)) == 25.0
    # ḡ = 1.5 <= 20: θ_0 = log(exp(1.5) − 1) = log(3.481689) = 1.2475175
    assert float(gd.warm_start_theta0(1.5)) == pytest.approx(1.247517541074546, rel=1e-12)
    for g in (1.5, 20.0, 25.0, 80.0):
        assert float(gd.margin(gd.warm_start_theta0(g))) == pytest.approx(g, rel=1e-9)


def test_ff_mlp_warm_start_uses_the_first_batch_mean_goodness_in_both_branches():
    model = mlp.FFMLP(d_in=6, widths=(5, 4), classes=3)
    key = jax.random.key(3)
    params = model.init(key, jnp.float64)
    y = jnp.arange(8) % 3

    @jax.jit  # one program for both inputs (same shapes): the warm start, its passes, ḡ_l
    def run(x):
        started = model.warm_start(params, x, y, key)
        return started, model.passes(x, y, key), model.mean_goodness(params, x, y, key)

    noise = jax.random.normal(jax.random.fold_in(key, 1), (8, 6), jnp.float64)
    for scale, branch in [(1.0, "inverse softplus"), (30.0, "identity")]:
        started, passes, mean_goodness = run(scale * noise)
        # oracle: layer 0's ḡ over the positive and negative passes, by numpy
        x_pos, x_neg = (np.asarray(v) for v in passes)
        W, b = np.asarray(params["layers"][0]["W"]), np.asarray(params["layers"][0]["b"])
        g = [np.mean(np.maximum(v @ W + b, 0) ** 2, axis=1) for v in (x_pos, x_neg)]
        g0 = np.mean(np.concatenate(g))
        theta0 = float(started["layers"][0]["theta0"])
        if branch == "identity":
            assert g0 > 20 and theta0 == pytest.approx(g0, rel=1e-12)
        else:
            assert g0 <= 20 and theta0 == pytest.approx(np.log(np.expm1(g0)), rel=1e-10)
        for l, lp in enumerate(started["layers"]):
            g_l = mean_goodness[l]
            assert float(gd.margin(lp["theta0"])) == pytest.approx(float(g_l), rel=1e-9)
    assert mlp.hinton(6, (5, 4), 3).warm_start(params, noise, y, key) is params


def test_margin_loss_by_hand():
    # g⁺ = 3, g⁻ = 1, T = 2, θ = 1: softplus(1 − 1.5) + softplus(0.5 − 1) = 2 softplus(−0.5)
    loss = gd.margin_loss(jnp.asarray([3.0]), jnp.asarray([1.0]), 2.0, 1.0)
    assert float(loss) == pytest.approx(0.9481539683602134, rel=1e-12)


def test_negative_labels_are_never_the_true_label_and_uniform_over_the_rest():
    key = jax.random.key(0)
    for K in (2, 3, 10):
        y = jnp.arange(6000) % K
        neg = np.asarray(gd.negative_labels(jax.random.fold_in(key, K), y, K))
        assert np.all(neg != np.asarray(y)) and neg.min() >= 0 and neg.max() < K
    y = jnp.zeros((40000,), jnp.int32)
    counts = np.bincount(np.asarray(gd.negative_labels(key, y, 5)), minlength=5)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / 40000, 0.25, atol=0.01)
    with pytest.raises(ValueError, match="K >= 2"):
        gd.negative_labels(key, y, 1)


def test_label_overlay_writes_lambda_e_y_on_the_first_k_inputs():
    x = jnp.arange(12.0).reshape(2, 6)
    out = np.asarray(gd.overlay_label(x, jnp.asarray([2, 0]), 3, lam=0.5))
    np.testing.assert_array_equal(out[:, :3], [[0, 0, 0.5], [0.5, 0, 0]])
    np.testing.assert_array_equal(out[:, 3:], np.asarray(x)[:, 3:])
    np.testing.assert_allclose(np.asarray(gd.overlay_neutral(x, 3, 0.6))[:, :3], 0.2, rtol=1e-14)
    with pytest.raises(ValueError, match="first K = 7"):
        gd.overlay_label(x, jnp.asarray([0, 1]), 7)


def test_spatial_goodness_is_adaptive_avg_pool_of_z_squared():
    z = jnp.arange(2 * 4 * 4 * 3, dtype=jnp.float64).reshape(2, 4, 4, 3)
    u = np.asarray(gd.spatial_goodness(z, (2, 2))).reshape(2, 2, 2, 3)
    z2 = np.asarray(z) ** 2
    np.testing.assert_allclose(u[:, 0, 1], z2[:, :2, 2:].mean(axis=(1, 2)), rtol=1e-14)
    # PyTorch's bins on 5 → 2: [0, 3) and [2, 5), overlapping at row 2
    z5 = jnp.arange(25.0).reshape(1, 5, 5, 1)
    u5 = np.asarray(gd.adaptive_avg_pool(z5, (2, 2)))[0, :, :, 0]
    np.testing.assert_allclose(u5[1, 0], np.asarray(z5)[0, 2:5, 0:3, 0].mean())
    assert gd.square_goodness(z).shape == (2, 48)
    with pytest.raises(ValueError, match="within the map"):
        gd.adaptive_avg_pool(z, (5, 5))


def test_random_readout_scale_and_column_normalisation():
    r = gd.random_readout(jax.random.key(0), 4000, 10, jnp.float64)
    assert np.var(np.asarray(r["R"])) == pytest.approx(0.1, rel=0.03)  # N(0, 1/K)
    n = gd.random_readout(jax.random.key(0), 50, 10, jnp.float64, normalise=True)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(n["R"]), axis=0), 1.0, rtol=1e-12)
    same_key = gd.random_readout(jax.random.key(0), 50, 10, jnp.float64)
    np.testing.assert_array_equal(n["b"], same_key["b"])


def test_label_smoothing_cross_entropy_by_hand():
    logits = jnp.log(jnp.asarray([[0.5, 0.25, 0.25]]))
    # ε = 0.1, K = 3: −(0.9333 log 0.5 + 0.0333 log 0.25 · 2)
    want = -((0.9 + 0.1 / 3) * np.log(0.5) + 2 * (0.1 / 3) * np.log(0.25))
    assert float(gd.cross_entropy(logits, jnp.asarray([0]), 0.1)) == pytest.approx(want, 1e-12)
