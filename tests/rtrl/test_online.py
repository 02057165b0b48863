"""rtrl.online's gradient diagnostics: over Θ = [W_rec | W_in | b] only, per group, the readout
apart; a hand-made pair with the arithmetic in comments, then real algorithms in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rtrl
from rtrl import online
from rtrl.interface import Algorithm, StepOutput

F64 = jnp.float64
T = 16  # stream length of the real-algorithm checks


def _fixed(name, grads):
    """An Algorithm whose every step returns `grads` (loss 0, prediction [0])."""

    def step(params, state, x, y):
        return state, StepOutput(grads, jnp.zeros((), F64), jnp.zeros((1,), F64))

    return Algorithm(name, lambda key, params: (), step)


def _orthogonal_on_theta_identical_readout():
    """Two gradients orthogonal on every group of Θ and equal on the readout (n = 2, n_in = 1)."""
    readout = {"W_out": jnp.array([[3.0, 4.0]], F64), "b_out": jnp.array([12.0], F64)}
    g = {
        "W_rec": jnp.array([[1.0, 0.0], [0.0, 0.0]], F64),
        "W_in": jnp.array([[1.0], [0.0]], F64),
        "b": jnp.array([1.0, 0.0], F64),
        **readout,
    }
    g_ref = {
        "W_rec": jnp.array([[0.0, 1.0], [0.0, 0.0]], F64),
        "W_in": jnp.array([[0.0], [1.0]], F64),
        "b": jnp.array([0.0, 1.0], F64),
        **readout,
    }
    return g, g_ref


def _record(g, g_ref):
    learner = online.make_online(_fixed("algo", g), optax.sgd(0.0), _fixed("full", g_ref))
    state = learner.init(jax.random.key(0), jax.tree.map(jnp.zeros_like, g))
    _, record = jax.jit(learner.step)(state, jnp.zeros((1,), F64), rtrl.Target(jnp.zeros(1), 1.0))
    return record


def test_cosine_excludes_the_readout_every_method_gets_identically():
    """The pitfall the feedback-alignment audit paper catalogues (../shared/seeds/
    fa_audit_paper.tex, "Pipeline pitfalls catalog", items 5-6: how the cosine is aggregated over
    parameters decides the headline number, and per-group structure hides behind one aggregate):
    a cosine that includes parameters every method gets identically (here the exact readout
    W_out, b_out) is inflated towards 1. Two gradients orthogonal on Θ that share the readout
    must record cosine 0, not the all-parameter 0.98; this test fails if the readout is included.
    """
    g, g_ref = _orthogonal_on_theta_identical_readout()
    record = _record(g, g_ref)
    # Θ: ⟨g_Θ, g_Θ^ref⟩ = 1·0 + 0·1 (W_rec) + 1·0 + 0·1 (W_in) + 1·0 + 0·1 (b) = 0.
    assert float(record.cosine) == 0.0
    np.testing.assert_array_equal(record.group_cosine, [0.0, 0.0, 0.0])  # W_rec, W_in, b
    # ‖g_Θ‖² = ‖g_Θ^ref‖² = 1 + 1 + 1 = 3, so the ratio is 1.
    np.testing.assert_allclose(record.magnitude_ratio, 1.0, rtol=1e-15)
    # Readout: ‖W_out‖ = sqrt(9 + 16) = 5, ‖b_out‖ = 12, the same for both, difference 0.
    np.testing.assert_allclose(record.readout_norm, [5.0, 12.0], rtol=1e-15)
    np.testing.assert_allclose(record.shadow_readout_norm, [5.0, 12.0], rtol=1e-15)
    assert float(record.readout_difference) == 0.0
    # With the readout: (0 + 169) / (sqrt(3 + 169) · sqrt(3 + 169)) = 169 / 172 ≈ 0.983.
    np.testing.assert_allclose(record.cosine_with_readout, 169 / 172, rtol=1e-14)
    # ‖g‖ over every parameter (what the optimizer receives) is sqrt(172).
    np.testing.assert_allclose(record.grad_norm, np.sqrt(172.0), rtol=1e-15)


def test_diagnostics_without_a_shadow_are_nan_of_the_recorded_shapes():
    g, g_ref = _orthogonal_on_theta_identical_readout()
    with_shadow = _record(g, g_ref)
    learner = online.make_online(_fixed("algo", g), optax.sgd(0.0))
    state = learner.init(jax.random.key(0), jax.tree.map(jnp.zeros_like, g))
    _, alone = learner.step(state, jnp.zeros((1,), F64), rtrl.Target(jnp.zeros(1), 1.0))
    assert alone._fields == with_shadow._fields
    for name in online.StepRecord._fields[3:]:  # the comparison fields
        if name == "grad_norms":  # the method's own per-parameter norms, with or without
            assert set(alone.grad_norms) == set(g), name
            continue
        assert getattr(alone, name).shape == getattr(with_shadow, name).shape, name
        assert np.all(np.isnan(getattr(alone, name))), name
    assert with_shadow.group_cosine.shape == (3,) and with_shadow.readout_norm.shape == (2,)


def test_diagnostics_name_missing_parameters():
    g, g_ref = _orthogonal_on_theta_identical_readout()
    del g["b"], g_ref["b"]
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        online.shadow_diagnostics(g, g_ref)


def _records(cell_name, name, **options):
    """Per-step records [T] of `name` trained online with a full-RTRL shadow (float64, n = 6)."""
    cell = rtrl.cells.get(cell_name, 2, 6, 1)
    algo = rtrl.algorithms.get(name, cell, **options)
    learner = online.make_online(algo, optax.adam(1e-2), rtrl.algorithms.get("rtrl", cell))
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(T, 2)), F64)
    ys = rtrl.Target(jnp.asarray(np.sin(np.arange(T) / 3.0)[:, None], F64), jnp.ones(T, F64))
    state = learner.init(jax.random.key(1), cell.init(jax.random.key(2), F64))
    return jax.jit(learner.scan)(state, xs, ys)[1]


@pytest.mark.parametrize("cell_name", ["vanilla", "lstm"])
@pytest.mark.parametrize(
    ("name", "options"),
    [("rtrl", {}), ("sparse_rtrl", {"k": 6, "mask": "ring_self"})],  # full RTRL itself; k = n
    ids=["full_vs_itself", "k_equal_n"],
)
def test_exact_algorithms_give_theta_cosine_one(cell_name, name, options):
    records = _records(cell_name, name, **options)
    np.testing.assert_allclose(records.cosine, 1.0, atol=1e-12)
    np.testing.assert_allclose(records.magnitude_ratio, 1.0, rtol=1e-10)
    # W_rec's gradient is 0 at t = 0 (h_{-1} = 0), so its cosine is nan there: no ε clamp.
    assert np.all(np.isnan(records.group_cosine[0, 0]))
    np.testing.assert_allclose(records.group_cosine[1:], 1.0, atol=1e-12)
    np.testing.assert_allclose(records.group_cosine[0, 1:], 1.0, atol=1e-12)
    np.testing.assert_allclose(records.readout_norm, records.shadow_readout_norm, rtol=1e-12)
    np.testing.assert_allclose(records.readout_difference, 0.0, atol=1e-12)


@pytest.mark.parametrize("cell_name", ["vanilla", "lstm"])
def test_an_approximation_differs_on_theta_and_not_on_the_readout(cell_name):
    """k = 0 (immediate derivative) against full RTRL: the readout gradients agree to rounding,
    the Θ cosine is below 1, and the all-parameter cosine is pulled above the Θ one on average
    (not at every step: with ‖g_Θ‖ ≠ ‖g_Θ^full‖ the shared readout can also lower it)."""
    records = _records(cell_name, "sparse_rtrl", k=0, mask="ring_self")
    scale = np.linalg.norm(records.shadow_readout_norm, axis=1)
    np.testing.assert_allclose(records.readout_difference, 0.0, atol=1e-12 * scale.max())
    late = slice(T // 2, None)  # once M has had time to build paths k = 0 drops
    assert np.all(records.cosine[late] < 1 - 1e-6)
    assert np.mean(records.cosine_with_readout[late]) > np.mean(records.cosine[late]) + 0.05
