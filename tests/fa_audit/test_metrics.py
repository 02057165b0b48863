"""The audit paper's pitfalls (App. B) as tests: the wrong way gives the wrong number, ours not."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fa_audit import metrics


def _torch_style_cosine(a, b, eps=1e-8):
    """F.cosine_similarity: ⟨a, b⟩ / max(‖a‖ ‖b‖, ε) (pitfall 2, the wrong way)."""
    return jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), eps)


def _tinydfa_style_cosine(a, b, floor=1e-8):
    """The public TinyDFA alignment code's behaviour (pitfalls 2 and 7 in the wild): entries below
    1e-8 are zeroed, and two vanished vectors count as perfectly aligned."""
    a = jnp.where(jnp.abs(a) < floor, 0.0, a)
    b = jnp.where(jnp.abs(b) < floor, 0.0, b)
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    return jnp.where((na == 0) & (nb == 0), 1.0, jnp.dot(a, b) / jnp.maximum(na * nb, 1e-8))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_cosine_is_exact_at_any_scale(dtype):
    rng = np.random.default_rng(0)
    a = rng.normal(size=256)
    b = 0.6 * a + 0.8 * rng.normal(size=256)
    want = float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
    tol = 1e-6 if dtype == jnp.float32 else 1e-13
    for scale in [1.0, 1e-5, 1e-10, 1e-15, 1e-20, 1e-25, 1e-30]:
        x, y = jnp.asarray(a, dtype), jnp.asarray(b * scale / np.linalg.norm(b), dtype)
        assert float(metrics.cosine(x, y)) == pytest.approx(want, abs=tol), scale
        naive = jnp.dot(x, y) / (jnp.linalg.norm(x) * jnp.linalg.norm(y))
        if dtype == jnp.float32 and scale <= 1e-20:  # ‖y‖² underflows: the naive form fails
            assert not np.isfinite(float(naive)) or abs(float(naive) - want) > 0.1


def test_the_eps_clamped_cosine_is_wrong_at_the_degenerate_scale():
    """Pitfall 2: at ‖b‖ ~ 1e-10 the clamp divides by ‖a‖·1e-8, shrinking the cosine ~100×."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=64))
    a = a / jnp.linalg.norm(a)
    b = 1e-10 * (0.9 * a + 0.1 * jnp.asarray(rng.normal(size=64)) / 8)
    ours, clamped = float(metrics.cosine(a, b)), float(_torch_style_cosine(a, b))
    assert ours > 0.9
    shrink = float(jnp.linalg.norm(a) * jnp.linalg.norm(b)) / 1e-8  # ‖a‖‖b‖ ≈ 1e-10 vs ε = 1e-8
    assert shrink < 0.011
    assert clamped == pytest.approx(ours * shrink, rel=1e-6)


def test_vanished_gradients_have_no_direction():
    """Pitfall 7: cos(0, 0) is undefined (nan here); TinyDFA-style code reports 1.0, and zeroes a
    real 1e-10 gradient away before comparing."""
    zero = jnp.zeros(8)
    assert np.isnan(float(metrics.cosine(zero, zero)))
    assert float(_tinydfa_style_cosine(zero, zero)) == 1.0
    g = jnp.full(8, 1e-10)
    assert float(metrics.cosine(g, 2 * g)) == pytest.approx(1.0)
    assert float(_tinydfa_style_cosine(g, jnp.ones(8))) == 0.0  # the real gradient was zeroed


def test_row_norms_are_not_the_ord_minus_one_norm():
    """Pitfall 1: norm(x, -1) is ord = −1 of the whole matrix, not one L2 norm per row."""
    x = jnp.asarray([[3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])
    np.testing.assert_allclose(metrics.row_norms(x), [5.0, 10.0, 1.0])
    trap = jnp.linalg.norm(x, -1)
    assert trap.shape == () and float(trap) != 5.0


def test_fp16_underflows_the_degenerate_gradient_and_bf16_does_not():
    """Pitfall 3: a 5e-10 gradient entry is below fp16's smallest subnormal (6e-8)."""
    g = jnp.full(16, 5e-10, jnp.float32)
    assert float(jnp.max(jnp.abs(g.astype(jnp.float16)))) == 0.0
    assert float(jnp.max(jnp.abs(g.astype(jnp.bfloat16)))) > 0.0
    a = jnp.linspace(1.0, 2.0, 16, dtype=jnp.float32)
    want = float(metrics.cosine(a, g))
    bf16 = float(metrics.cosine(a, g.astype(jnp.bfloat16).astype(jnp.float32)))
    assert bf16 == pytest.approx(want, rel=1e-6)
    assert np.isnan(float(metrics.cosine(a, g.astype(jnp.float16).astype(jnp.float32))))


def _two_layer_samples():
    """Per-sample gradients where layer 0 aligns (cos ≈ 0.9), layer 1 is anti-aligned at a small
    scale, and sample-level noise is large: the four strategies disagree, one flips sign."""
    rng = np.random.default_rng(2)
    n = 32
    ref0 = rng.normal(size=(n, 40)) + 3.0  # layer 0: small, aligned
    g0 = ref0 + 0.3 * rng.normal(size=(n, 40))
    ref1 = 20.0 * (rng.normal(size=(n, 40)) + 1.0)  # layer 1: large, anti-aligned on average
    g1 = -0.5 * ref1 + 40.0 * rng.normal(size=(n, 40))
    g = {"layer0": jnp.asarray(g0), "layer1": jnp.asarray(g1)}
    ref = {"layer0": jnp.asarray(ref0), "layer1": jnp.asarray(ref1)}
    return g, ref


def test_aggregation_is_explicit_and_changes_the_number():
    """Pitfall 5: the same gradients give different headline numbers per strategy."""
    g, ref = _two_layer_samples()
    values = {
        s: float(metrics.aggregate_cosine(g, ref, s, batch_size=8)) for s in metrics.STRATEGIES
    }
    assert max(values.values()) - min(values.values()) > 0.3, values
    assert min(values.values()) < 0 < max(values.values()), values  # a sign flip
    with pytest.raises(ValueError, match="unknown aggregation"):
        metrics.aggregate_cosine(g, ref, "mean")
    with pytest.raises(ValueError, match="batch_size"):
        metrics.aggregate_cosine(g, ref, "batch_mean")


def test_per_layer_cosines_show_what_aggregation_hides():
    """Pitfall 6: one aligned layer drives the aggregate; per layer the others are ≈ 0 or below."""
    g, ref = _two_layer_samples()
    mean = jax.tree.map(lambda x: x.mean(axis=0), (g, ref))
    per_layer = metrics.per_layer_cosine(*mean)
    assert float(per_layer["layer0"]) > 0.9 and float(per_layer["layer1"]) < 0.0
    flat = float(metrics.aggregate_cosine(g, ref, "flat"))
    assert flat < 0.0  # the large layer decides the aggregate's sign
    with pytest.raises(ValueError, match="layers differ"):
        metrics.per_layer_cosine({"a": g["layer0"]}, ref)


def test_perturbation_correlation_controls():
    """The positive control (the true gradient) gives ρ ≈ +1, the negative (a random vector) ≈ 0."""

    def loss(h):
        return jnp.sum(jnp.sin(h) * jnp.arange(1.0, h.size + 1).reshape(h.shape)) + jnp.sum(h**2)

    h = jnp.linspace(-1.0, 1.0, 48).reshape(6, 8)
    key = jax.random.key(0)
    grad = jax.grad(loss)(h)
    assert float(metrics.perturbation_correlation(loss, h, grad, key, n=256)) > 0.99
    random = jax.random.normal(jax.random.key(1), h.shape)
    assert abs(float(metrics.perturbation_correlation(loss, h, random, key, n=256))) < 0.25


def test_perturbation_correlation_survives_float32_on_a_large_state():
    """On a whole evaluation batch of a residual stream (float32, ‖h‖ ~ 1e3) the step is relative
    to ‖h‖ (an absolute ε = 1e-3 sits at the rounding of L: on the audit's d = 256 network it read
    ρ = 0.4–0.8 for the true gradient); the relative step gives the Taylor ceiling."""
    from fa_audit import audit, models

    model = models.ResidualMLP(d_in=32, d=64, blocks=3)
    params = model.init(jax.random.key(0))
    x = 30.0 * jax.random.normal(jax.random.key(1), (500, 32))
    labels = jax.random.randint(jax.random.key(2), (500,), 0, 10)
    _, hidden, _ = model.forward(params, x)
    loss = audit._rest(model, params, 2, labels)
    g = jax.grad(loss)(hidden[2])
    assert float(jnp.linalg.norm(hidden[2])) > 1e3
    rho = metrics.perturbation_correlation(loss, hidden[2], g, jax.random.key(3), n=64)
    assert float(rho) > 0.99
    noise = jax.random.normal(jax.random.key(4), g.shape)
    assert (
        abs(float(metrics.perturbation_correlation(loss, hidden[2], noise, jax.random.key(3))))
        < 0.35
    )
