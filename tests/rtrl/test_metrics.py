"""Metrics on hand-made inputs with the arithmetic in comments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtrl import metrics


def test_window_mean_and_pre_post():
    losses = np.arange(10.0)  # ℓ_t = t
    assert metrics.window_mean(losses, 2, 5) == pytest.approx(3.0)  # (2 + 3 + 4) / 3
    assert metrics.window_mean(losses, -3, None) == pytest.approx(8.0)  # (7 + 8 + 9) / 3
    assert metrics.window_mean(losses, 0, -8) == pytest.approx(0.5)  # (0 + 1) / 2
    with pytest.raises(ValueError, match="empty"):
        metrics.window_mean(losses, 5, 5)
    pre, post = metrics.pre_post_mse(losses, shift=4, window=2)
    assert pre == pytest.approx(2.5)  # ℓ_2, ℓ_3
    assert post == pytest.approx(8.5)  # last two: ℓ_8, ℓ_9
    with pytest.raises(ValueError):
        metrics.pre_post_mse(losses, shift=1, window=2)  # pre window would start at −1
    assert metrics.first_shift_post(losses, shift=2, next_shift=6, window=3) == pytest.approx(4.0)


def test_window_means_broadcast_over_seeds():
    losses = np.stack([np.arange(10.0), 2 * np.arange(10.0)])  # [2 seeds, T = 10]
    pre, post = metrics.pre_post_mse(losses, shift=4, window=2)
    np.testing.assert_allclose(pre, [2.5, 5.0])
    np.testing.assert_allclose(post, [8.5, 17.0])
    np.testing.assert_allclose(metrics.weighted_mean(losses, np.eye(10)[[0, 9]]), [0.0, 18.0])


def test_gap_recovery():
    # (log .1 − log .01) / (log .1 − log .001) = log 10 / log 100 = 1/2.
    r = metrics.gap_recovery(jnp.array([0.1, 0.1, 0.1]), jnp.array([0.01, 0.001, 0.1]), 0.001)
    np.testing.assert_allclose(r, [0.5, 1.0, 0.0], atol=1e-12)


def test_coefficient_of_variation_and_weighted_mean():
    # x = (1, 3): mean 2, std (ddof 0) 1 -> CV 1/2.
    assert metrics.coefficient_of_variation(np.array([1.0, 3.0])) == pytest.approx(0.5)
    cv = metrics.coefficient_of_variation(np.array([[1.0, 3.0], [2.0, 2.0]]), axis=0)
    np.testing.assert_allclose(cv, [1 / 3, 1 / 5])  # means (1.5, 2.5), stds (0.5, 0.5)
    # (1·1 + 2·0 + 3·1) / 2 = 2.
    assert metrics.weighted_mean([1.0, 2.0, 3.0], [1.0, 0.0, 1.0]) == pytest.approx(2.0)


def test_copy_accuracy():
    targets = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3)  # [T = 4, C = 3]
    logits = jnp.array([[5.0, 0, 0], [0, 0, 9], [0, 0, 1], [0, 2, 1]])  # argmax 0, 2, 2, 1
    weights = jnp.array([0.0, 1.0, 1.0, 1.0])
    # Scored steps 1, 2, 3: correct only at 2 -> 1/3 (step 0 is right but unscored).
    assert metrics.copy_accuracy(logits, targets, weights) == pytest.approx(1 / 3)
    # Last two steps: 2 right, 3 wrong -> 1/2.
    assert metrics.copy_accuracy(logits, targets, weights, window_steps=2) == pytest.approx(0.5)
    batched = metrics.copy_accuracy(
        jnp.stack([logits, 10 * targets]), jnp.stack([targets, targets]), weights
    )
    np.testing.assert_allclose(batched, [1 / 3, 1.0])


def _tree(seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (3, 4)), "b": [jax.random.normal(k2, (5,))]}


def test_gradient_cosine_and_magnitude():
    g = _tree(0)
    neg = jax.tree.map(lambda x: -x, g)
    assert metrics.gradient_cosine(g, g) == pytest.approx(1.0, abs=1e-12)
    assert metrics.gradient_cosine(g, neg) == pytest.approx(-1.0, abs=1e-12)
    assert metrics.magnitude_ratio(jax.tree.map(lambda x: 2 * x, g), g) == pytest.approx(2.0)
    # Orthogonal across leaves: (w, 0) · (0, b) = 0.
    only_w = {"w": g["w"], "b": [jnp.zeros(5)]}
    only_b = {"w": jnp.zeros((3, 4)), "b": g["b"]}
    assert metrics.gradient_cosine(only_w, only_b) == pytest.approx(0.0, abs=1e-15)
    # Against the concatenated-vector formula.
    h = _tree(1)
    u = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    v = np.concatenate([np.ravel(x) for x in jax.tree.leaves(h)])
    expected = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    assert metrics.gradient_cosine(g, h) == pytest.approx(expected, rel=1e-12)
    assert metrics.magnitude_ratio(g, h) == pytest.approx(
        np.linalg.norm(u) / np.linalg.norm(v), rel=1e-12
    )
    assert metrics.tree_norm(g) == pytest.approx(np.linalg.norm(u), rel=1e-12)
    # ‖(3 + 4i, [12])‖ = sqrt(|3 + 4i|² + 12²) = sqrt(25 + 144) = 13: complex leaves by modulus.
    assert metrics.tree_norm({"z": jnp.array(3 + 4j), "b": [jnp.array([12.0])]}) == pytest.approx(
        13.0, rel=1e-15
    )
    # No ε clamp: a zero gradient gives nan.
    assert math.isnan(float(metrics.gradient_cosine(jax.tree.map(jnp.zeros_like, g), g)))
    with pytest.raises(ValueError, match="differ"):
        metrics.gradient_cosine(g, {"w": g["w"]})


def test_gradient_cosine_under_vmap():
    g = _tree(0)
    gs = jax.tree.map(lambda x: jnp.stack([x, -x, 3 * x]), g)  # leading axis of 3
    cos = jax.vmap(metrics.gradient_cosine, in_axes=(0, None))(gs, g)
    ratio = jax.vmap(metrics.magnitude_ratio, in_axes=(0, None))(gs, g)
    np.testing.assert_allclose(cos, [1.0, -1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(ratio, [1.0, 1.0, 3.0], rtol=1e-12)


def _with_singular_values(s, n_cols, seed):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((len(s), len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n_cols, len(s))))  # orthonormal columns
    return U @ np.diag(s) @ V.T  # [n, n_cols]


@pytest.mark.parametrize("seed", [0, 1])
def test_jacobian_spectrum_known_singular_values(seed):
    M = _with_singular_values([4.0, 2.0, 1.0, 1.0], 6, seed)
    rank, cond = metrics.jacobian_spectrum(M)
    # σ² = 16, 4, 1, 1: cumsum 16, 20, 21, 22; 0.95 · 22 = 20.9 -> r = 3. κ = 4 / 1.
    assert int(rank) == 3 and rank.dtype == jnp.int32
    assert float(cond) == pytest.approx(4.0, rel=1e-10)
    # 16 / 22 ≈ 0.73 ≥ 0.7 -> r = 1; 20 / 22 ≈ 0.91 ≥ 0.9 -> r = 2.
    assert int(metrics.jacobian_spectrum(M, variance=0.7)[0]) == 1
    assert int(metrics.jacobian_spectrum(M, variance=0.9)[0]) == 2
    # The [n, a, b] path reshapes to [n, a·b] with the same spectrum.
    rank3, cond3 = metrics.jacobian_spectrum(M.reshape(4, 2, 3))
    assert int(rank3) == 3 and float(cond3) == pytest.approx(4.0, rel=1e-10)


def test_jacobian_spectrum_singular_and_vmap():
    M = _with_singular_values([3.0, 1.0, 0.0], 5, 2)
    rank, cond = metrics.jacobian_spectrum(M)
    assert int(rank) == 2  # 9, 10, 10 over 10 -> 0.95 · 10 reached at r = 2
    assert float(cond) > 1e12  # σ_min is 0 up to rounding
    assert float(metrics.jacobian_spectrum(np.zeros((3, 4)))[1]) == math.inf
    assert float(metrics.jacobian_spectrum(np.ones((4, 2)))[1]) == math.inf  # P < n: σ_3 = 0
    Ms = np.stack([_with_singular_values([4.0, 2.0, 1.0, 1.0], 6, s) for s in range(3)])
    ranks, conds = jax.jit(jax.vmap(metrics.jacobian_spectrum))(Ms)
    np.testing.assert_array_equal(ranks, [3, 3, 3])
    np.testing.assert_allclose(conds, [4.0, 4.0, 4.0], rtol=1e-10)


def test_jacobian_spectrum_wide_float32_accuracy_and_memory():
    # A condition number of 1e4 in float32 (the range full RTRL's M reaches) is recovered.
    s = np.geomspace(1e4, 1.0, 16)
    M = jnp.asarray(_with_singular_values(s, 400, 3), jnp.float32)
    rank, cond = metrics.jacobian_spectrum(M)
    assert float(cond) == pytest.approx(1e4, rel=1e-2)
    # The study's largest M (n = 256, P = 256 · 258) needs workspace of order n·P, not P².
    spec = jax.ShapeDtypeStruct((256, 256 * 258), jnp.float32)
    compiled = jax.jit(metrics.jacobian_spectrum).lower(spec).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 4 * 256 * 256 * 258 * 4


def test_row_normalised_condition_ignores_row_lengths_but_not_angles():
    orthogonal = np.diag([1e-3, 1.0, 1e3]).astype(np.float64)  # rows orthogonal, lengths 1e6 apart
    assert float(metrics.jacobian_spectrum(orthogonal)[1]) == pytest.approx(1e6)
    assert float(metrics.row_normalised_condition(orthogonal)) == pytest.approx(1.0)
    # two unit rows at 60°: singular values sqrt(1 ± cos 60°) = sqrt(1.5), sqrt(0.5) -> cond √3
    tilted = np.array([[1.0, 0.0], [0.5, np.sqrt(0.75)]]) * np.array([[2.0], [7.0]])
    assert float(metrics.row_normalised_condition(tilted)) == pytest.approx(np.sqrt(3.0))


def test_pre_shift_plateau_and_every_shift_post():
    still_falling = np.concatenate([np.linspace(1.0, 0.1, 100), np.full(100, 0.5)])
    flat = np.concatenate([np.full(100, 0.2), np.full(100, 0.5)])
    plateau = metrics.pre_shift_plateau(np.stack([still_falling, flat]), shift=100, window=25)
    assert np.asarray(plateau).tolist() == [False, True]
    regimes = np.concatenate([np.full(10, 1.0), np.full(10, 2.0), np.full(10, 3.0)])
    np.testing.assert_allclose(metrics.every_shift_post(regimes, (10, 20), window=4), [2.0, 3.0])


def test_spectral_radius_matches_the_eigenvalues():
    """Gelfand's formula by repeated squaring against numpy's eigenvalues: random non-symmetric
    matrices (complex eigenvalues), a contraction at the 0.01 scale, a rotation, zero."""
    rng = np.random.default_rng(0)
    for n, scale in ((8, 1.0), (64, 0.3), (64, 1e-2), (256, 1.0)):
        J = scale * rng.normal(size=(n, n)) / np.sqrt(n)
        want = np.max(np.abs(np.linalg.eigvals(J)))
        got = float(metrics.spectral_radius(jnp.asarray(J)))
        assert got == pytest.approx(want, rel=5e-3), (n, scale)
    rotation = np.array([[0.0, -0.9], [0.9, 0.0]])  # eigenvalues ±0.9i: power iteration cycles
    assert float(metrics.spectral_radius(jnp.asarray(rotation))) == pytest.approx(0.9, rel=1e-3)
    assert float(metrics.spectral_radius(jnp.zeros((4, 4)))) == 0.0
    assert float(metrics.spectral_radius(jnp.asarray(np.diag([0.5, 1e-3])))) == pytest.approx(
        0.5, rel=1e-3
    )
