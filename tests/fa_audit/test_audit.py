"""The protocol's measurements against hand computations (float64), the diagnostics firing on a
constructed degenerate network and not on a healthy one, and the pitfalls that need a trained
network: training-specific B_l, TinyDFA's clamped alignment, auxiliary networks persisted."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import checkpoint
from fa_audit import audit, diagnostics, metrics, models, rules, tasks

F64 = jnp.float64


def _problem(seed=0, d=8, terminal_norm=True, batch=40):
    model = models.ResidualMLP(d_in=6, d=d, blocks=3, classes=4, terminal_norm=terminal_norm)
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 0), F64)
    x = jax.random.normal(jax.random.fold_in(key, 1), (batch, 6), F64)
    labels = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, 4)
    return model, params, x, labels


def _measure(model, method, params, state, x, labels, **kw):
    rule = rules.get(method, model)
    return audit.measure(model, method, rule, params, state, x, labels, jax.random.key(9), **kw)


def test_measure_matches_hand_computations():
    model, params, x, labels = _problem()
    out = _measure(model, "bp", params, None, x, labels, directions=256, eps=1e-6)
    _, hidden, _ = model.forward(params, x)
    norms = [np.linalg.norm(np.asarray(h)) for h in hidden]
    np.testing.assert_allclose(out["h_norm"], norms, rtol=1e-12)
    np.testing.assert_allclose(out["growth"], np.array(norms[1:]) / norms[:-1], rtol=1e-12)

    def loss_from_h_L(h):
        return models.cross_entropy(model.readout(params, h), labels)

    g_L = jax.grad(loss_from_h_L)(hidden[-1])
    np.testing.assert_allclose(out["g_norm"][-1], np.linalg.norm(np.asarray(g_L)), rtol=1e-12)
    # BP's own credit is ∂L/∂h_{l+1}: cosine 1, ρ at the Taylor ceiling; a random vector ρ ≈ 0
    np.testing.assert_allclose(out["deep_cos"], 1.0, rtol=1e-12)
    assert np.all(np.asarray(out["deep_rho"]) > 0.99)
    assert np.all(np.abs(np.asarray(out["rho_random"])) < 0.3)
    np.testing.assert_allclose(out["gamma"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(out["gamma_flat"], 1.0, rtol=1e-12)
    half = x.shape[0] // 4
    slices = [
        jax.grad(
            lambda p, i=i: models.cross_entropy(
                model.forward(p, x[i * half : (i + 1) * half])[0], labels[i * half : (i + 1) * half]
            )
        )(params)["blocks"]
        for i in range(4)
    ]
    want = np.mean(
        [float(metrics.cosine(slices[i], slices[j])) for i in range(4) for j in range(i)]
    )
    np.testing.assert_allclose(out["direction"], want, rtol=1e-10)


def test_headline_gamma_leaves_out_the_head_every_method_gets_exactly():
    model, params, x, labels = _problem(1)
    rule = rules.get("dfa", model)
    state = rule.init(jax.random.key(0), params)
    out = _measure(model, "dfa", params, state, x, labels)
    _, own = rule.step(params, state, x, labels)
    _, ref = rules.bp(model).step(params, None, x, labels)
    credited = metrics.cosine(
        {"e": own.grads["embed"], "b": own.grads["blocks"]},
        {"e": ref.grads["embed"], "b": ref.grads["blocks"]},
    )
    np.testing.assert_allclose(out["gamma_flat"], credited, rtol=1e-12)
    inflated = metrics.cosine(own.grads, ref.grads)
    assert float(inflated) > float(credited)  # the exact head pulls the all-parameter cosine up
    np.testing.assert_allclose(out["gamma"][-1], 1.0, rtol=1e-12)  # the head, per layer


def _grown(params, factor):
    """The same network with every block's output layer scaled: residual growth, and through the
    terminal LN a vanishing ∂L/∂h_L (Mode 1 by construction)."""
    blocks = [
        {**b, "W2": factor * b["W2"], "b2": factor * b["b2"] + factor} for b in params["blocks"]
    ]
    return {**params, "blocks": blocks}


def test_diagnostics_fire_on_a_constructed_degenerate_network_only():
    model, params, x, labels = _problem(2)
    healthy = _measure(model, "bp", params, None, x, labels)
    degenerate = _measure(model, "bp", _grown(params, 1e8), None, x, labels)
    assert float(jnp.max(healthy["growth"])) < 50 < float(jnp.max(degenerate["growth"]))
    assert float(healthy["g_norm"][-1]) > 1e-7 > float(degenerate["g_norm"][-1])
    m_ok = diagnostics.Measurements(
        float(jnp.max(healthy["growth"])), float(healthy["g_norm"][-1]), 0.0, 10.0
    )
    m_bad = diagnostics.Measurements(
        float(jnp.max(degenerate["growth"])), float(degenerate["g_norm"][-1]), 0.0, 10.0
    )
    assert diagnostics.verdicts(m_ok)["full"] == "trust"
    assert diagnostics.fires(m_bad) == {"a": True, "b": True, "c": False, "d": False}
    # without a terminal LN the same growth does not shrink the gradient: (b) stays silent
    plain, p2, x2, y2 = _problem(2, terminal_norm=False)
    grown = _measure(plain, "bp", _grown(p2, 1e8), None, x2, y2)
    assert float(grown["g_norm"][-1]) > 1e-7


def _train_dfa(steps=400, seed=0):
    model = models.ResidualMLP(d_in=12, d=32, blocks=3, classes=10)
    (x, y), _ = tasks.teacher(jax.random.key(5), train=2048, test=10, d_in=12, width=32)
    rule = rules.get("dfa", model)
    params = model.init(jax.random.key(seed))
    state = rule.init(jax.random.key(seed + 1), params)
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(carry, batch):
        params, state, opt = carry
        state, out = rule.step(params, state, *batch)
        updates, opt = tx.update(out.grads, opt, params)
        return (optax.apply_updates(params, updates), state, opt), out.loss

    xs = jnp.asarray(x[: steps * 64 % 2048 or 2048]).reshape(-1, 64, 12)
    ys = jnp.asarray(y[: xs.shape[0] * 64]).reshape(-1, 64)
    carry = (params, state, opt)
    for _ in range(steps // xs.shape[0]):
        carry, _ = jax.lax.scan(step, carry, (xs, ys))
    return model, carry[0], carry[1], jnp.asarray(x[:512]), jnp.asarray(y[:512])


def test_alignment_is_specific_to_the_training_feedback():
    """Pitfall 4: a DFA-trained network aligns with its own B_l; with fresh B_l, Γ ≈ 0."""
    model, params, state, x, y = _train_dfa()
    out = _measure(model, "dfa", params, state, x, y)
    cos, gamma = audit.null_calibration(model, params, x, y, jax.random.key(3), draws=20)
    assert cos.shape == (20, 3) and gamma.shape == (20,)
    trained = float(out["gamma_flat"])
    # measured: trained-B Γ 0.44, fresh Γ −0.004 ± 0.03
    assert trained > 0.2, trained
    assert abs(float(jnp.mean(gamma))) < 0.05 and float(jnp.std(gamma)) < 0.1


def _tinydfa_alignment(a, b):
    """The public TinyDFA alignment code's behaviour (the wrong way): entries below 1e-8 are
    zeroed, and two vanished vectors count as perfectly aligned."""
    a = jnp.where(jnp.abs(a) < 1e-8, 0.0, a)
    b = jnp.where(jnp.abs(b) < 1e-8, 0.0, b)
    na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
    return jnp.where((na == 0) & (nb == 0), 1.0, jnp.dot(a, b) / jnp.maximum(na * nb, 1e-8))


def test_tinydfa_reports_perfect_alignment_on_vanished_gradients():
    """Pitfalls 2 and 7 in the wild: at Mode 1's scale (~5e-10) two unrelated gradients read as
    cos = 1 through TinyDFA's clamping; ours gives their true cosine."""
    key = jax.random.key(0)
    a = 5e-10 * jax.random.normal(jax.random.fold_in(key, 0), (256,), F64)
    b = 5e-10 * jax.random.normal(jax.random.fold_in(key, 1), (256,), F64)
    assert float(_tinydfa_alignment(a, b)) == 1.0
    truth = float(jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    np.testing.assert_allclose(metrics.cosine(a, b), truth, rtol=1e-12)
    assert abs(truth) < 0.3


def test_checkpoints_carry_the_feedback_and_refuse_without_it(tmp_path):
    """Pitfall 7: B_l round-trips through the suite's checkpoint; a state restored without it
    raises instead of measuring BP against itself."""
    model, params, _, _ = _problem(3)
    state = rules.get("dfa", model).init(jax.random.key(1), params)
    checkpoint.save(tmp_path, {"what": "dfa"}, {"params": params, "rule": state})
    meta, arrays, _ = checkpoint.load_latest(tmp_path)
    restored = checkpoint.restore({"params": params, "rule": state}, arrays)
    for a, b in zip(jax.tree.leaves(restored["rule"]), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    rules.auxiliary("dfa", restored["rule"])
    checkpoint.save(tmp_path, {"what": "params only"}, {"params": params})
    _, arrays, _ = checkpoint.load_latest(tmp_path)
    lost = rules.FeedbackState(arrays.get("rule", {}).get("feedback", {}))
    with pytest.raises(ValueError, match="did not persist"):
        rules.auxiliary("dfa", lost)
