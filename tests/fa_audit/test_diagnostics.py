"""Each diagnostic fires on a constructed degenerate residual network and not on a healthy one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fa_audit import diagnostics


def _layer_norm(h):
    mu = h.mean(-1, keepdims=True)
    return (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-5)


def _residual_mlp(gain, blocks=4, d=32, batch=16, seed=0):
    """A pre-LN residual MLP whose block outputs are scaled by `gain`, with a terminal LN and a
    linear head: (residual states [h_0..h_L], ∂L/∂h_L). gain ≫ 1 makes the stream explode
    (Mode 1's structure), and the terminal LN then divides the gradient by ‖h_L‖."""
    keys = jax.random.split(jax.random.key(seed), blocks + 3)
    x = jax.random.normal(keys[0], (batch, d))
    y = jax.random.randint(keys[1], (batch,), 0, 10)
    Ws = [jax.random.normal(k, (d, d)) / jnp.sqrt(d) for k in keys[2:-1]]
    head = jax.random.normal(keys[-1], (d, 10)) / jnp.sqrt(d)
    hidden = [x]
    for W in Ws:
        hidden.append(hidden[-1] + gain * jnp.tanh(_layer_norm(hidden[-1]) @ W))

    def loss(h_L):
        logits = _layer_norm(h_L) @ head
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(batch), y])

    return hidden, jax.grad(loss)(hidden[-1])


def test_growth_and_gradient_floor_separate_degenerate_from_healthy():
    healthy, g_healthy = _residual_mlp(gain=0.5)
    degenerate, g_degenerate = _residual_mlp(gain=1e8)
    assert diagnostics.residual_growth(healthy)[0] < 5
    assert diagnostics.residual_growth(degenerate)[0] > 50
    assert diagnostics.bp_grad_norm(g_healthy) > 1e-3
    assert diagnostics.bp_grad_norm(g_degenerate) < 1e-7  # below the calibrated floor


def test_verdicts_follow_the_fired_diagnostics():
    healthy = diagnostics.Measurements(growth=1.3, grad_norm=4e-4, direction=0.1, margin_pp=26.0)
    dfa_like = diagnostics.Measurements(growth=237.0, grad_norm=1e-9, direction=0.2, margin_pp=-4.1)
    v = diagnostics.verdicts(healthy)
    assert v == {
        "S0": "---",
        "S1": "---",
        "+(a)": "---",
        "+(b)": "---",
        "+(c)": "---",
        "+(d)": "---",
        "full": "trust",
    }
    v = diagnostics.verdicts(dfa_like)
    assert (v["+(a)"], v["+(b)"], v["+(c)"], v["+(d)"], v["full"]) == (
        "WB",
        "WB",
        "---",
        "WB",
        "WB",
    )
    assert v["S0"] == v["S1"] == "---"  # the status quo walks nothing back
    assert diagnostics.robustness(dfa_like) == {0.5: "WB", 1.0: "WB", 2.0: "WB"}
    assert diagnostics.robustness(healthy) == {0.5: "trust", 1.0: "trust", 2.0: "trust"}
    borderline = healthy._replace(growth=60.0)  # fires at ×1 and ×½, not at ×2 (threshold 100)
    assert diagnostics.robustness(borderline) == {0.5: "WB", 1.0: "WB", 2.0: "trust"}


def test_direction_stability_detects_a_shared_drift():
    rng = np.random.default_rng(0)
    drift = rng.normal(size=64)
    drifting = [jnp.asarray(drift + 0.3 * rng.normal(size=64)) for _ in range(5)]
    per_sample = [jnp.asarray(rng.normal(size=64)) for _ in range(5)]
    assert diagnostics.direction_stability(drifting) > 0.30
    assert abs(diagnostics.direction_stability(per_sample)) < 0.30
    with pytest.raises(ValueError, match=">= 2"):
        diagnostics.direction_stability(drifting[:1])


def test_frozen_margin_in_percentage_points():
    assert diagnostics.frozen_margin(0.308, 0.349) == pytest.approx(-4.1)
    m = diagnostics.Measurements(growth=1.0, grad_norm=1.0, direction=0.0, margin_pp=1.9)
    assert diagnostics.fires(m)["d"] and not diagnostics.fires(m)["a"]
    with pytest.raises(ValueError, match="two residual states"):
        diagnostics.residual_growth([jnp.ones((2, 2))])
