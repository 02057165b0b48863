"""Credit methods against their definitions (float64): BP is jax.grad; FA with B = W is BP and
with random B keeps the exact head and last-block output weights; DFA's block gradients are the
gradients of ⟨f_l(h_l), e_T B_l⟩ with h_l held fixed; the penalty adds λ‖f_l‖²'s gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fa_audit import models, rules

F64 = jnp.float64


def _problem(seed=0, terminal_norm=True):
    model = models.ResidualMLP(d_in=5, d=6, blocks=3, classes=4, terminal_norm=terminal_norm)
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 0), F64)
    params = jax.tree.map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.fold_in(key, a.size), a.shape, F64), params
    )
    x = jax.random.normal(jax.random.fold_in(key, 1), (7, 5), F64)
    labels = jax.random.randint(jax.random.fold_in(key, 2), (7,), 0, 4)
    return model, params, x, labels


def _close(a, b, rtol=1e-12):
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(leaf_a, leaf_b, rtol=rtol, atol=1e-14)


def test_bp_is_jax_grad():
    model, params, x, labels = _problem()
    rule = rules.get("bp", model)
    _, out = rule.step(params, rule.init(None, params), x, labels)
    want = jax.grad(lambda p: models.cross_entropy(model.forward(p, x)[0], labels))(params)
    _close(out.grads, want)


def test_fa_with_feedback_equal_to_the_weights_is_bp():
    model, params, x, labels = _problem(1)
    rule = rules.get("fa", model)
    state = rule.init(jax.random.key(3), params)
    same = rules.FeedbackState(
        {
            "embed": params["embed"]["W"],
            "blocks": [{"W1": b["W1"], "W2": b["W2"]} for b in params["blocks"]],
        }
    )
    _, out = rule.step(params, same, x, labels)
    _, ref = rules.get("bp", model).step(params, None, x, labels)
    _close(out.grads, ref.grads)
    _, random = rule.step(params, state, x, labels)  # random B: exact where no W^T is used
    _close(random.grads["head"], ref.grads["head"])
    for name in ("W2", "b2"):
        np.testing.assert_allclose(
            random.grads["blocks"][-1][name], ref.grads["blocks"][-1][name], rtol=1e-12
        )
    diff = np.abs(np.asarray(random.grads["blocks"][0]["W1"] - ref.grads["blocks"][0]["W1"])).max()
    assert diff > 1e-3  # and different where the feedback matters


@pytest.mark.parametrize("penalty", [0.0, 1e-2])
def test_dfa_block_gradients_are_the_local_losses(penalty):
    model, params, x, labels = _problem(2)
    rule = rules.get("dfa", model, penalty=penalty)
    state = rule.init(jax.random.key(4), params)
    _, out = rule.step(params, state, x, labels)
    logits, hidden, _ = model.forward(params, x)
    e_T = jax.nn.softmax(logits) - jax.nn.one_hot(labels, 4)  # ∂(mean CE)/∂logits · B
    e_T = e_T / x.shape[0]
    for l, (block, B_l) in enumerate(zip(params["blocks"], state.feedback["blocks"], strict=True)):
        h_l = hidden[l]

        def local(bp_, h_l=h_l, B_l=B_l):
            f = model.block(bp_, h_l)
            return jnp.sum(f * (e_T @ B_l)) + penalty * jnp.mean(jnp.sum(f**2, axis=-1))

        _close(out.grads["blocks"][l], jax.grad(local)(block))
    embed = jax.grad(lambda p: jnp.sum((x @ p["W"] + p["b"]) * (e_T @ state.feedback["embed"])))(
        params["embed"]
    )
    _close(out.grads["embed"], embed)
    _, ref = rules.get("bp", model).step(params, None, x, labels)
    _close(out.grads["head"], ref.grads["head"])


def test_unknown_methods_and_options_are_refused():
    model, _, _, _ = _problem()
    with pytest.raises(ValueError, match="unknown credit method"):
        rules.get("dfa2", model)
    with pytest.raises(ValueError, match="bp takes no options"):
        rules.get("bp", model, penalty=0.1)


def test_frozen_blocks_and_per_layer_alignment():
    model, params, x, labels = _problem(5)
    bp_rule, dfa_rule = rules.get("bp", model), rules.get("dfa", model)
    _, ref = bp_rule.step(params, None, x, labels)
    frozen = rules.frozen_blocks(dfa_rule)
    state = frozen.init(jax.random.key(0), params)
    _, out = frozen.step(params, state, x, labels)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(out.grads["blocks"]))
    _close(out.grads["head"], ref.grads["head"])
    gamma = rules.alignment(ref.grads, ref.grads)
    assert set(gamma) == {"embed", "block0", "block1", "block2", "head"}
    assert all(float(v) == pytest.approx(1.0) for v in gamma.values())
    _, dfa_out = dfa_rule.step(params, dfa_rule.init(jax.random.key(1), params), x, labels)
    gamma = rules.alignment(dfa_out.grads, ref.grads)
    assert float(gamma["head"]) == pytest.approx(1.0)  # the head is exact under DFA
    assert abs(float(gamma["block0"])) < 0.99  # random feedback at init: not aligned
