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

        def local(bp_, h_l=h_l, B_l=B_l, l=l):
            f = model.block(l, bp_, h_l)
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
    with pytest.raises(TypeError, match="relax"):
        rules.get("bp", model, relax_steps=3)


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


def _images(model, seed, batch=6):
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 0), F64)
    x = jax.random.normal(jax.random.fold_in(key, 1), (batch, *model.input_shape), F64)
    labels = jax.random.randint(jax.random.fold_in(key, 2), (batch,), 0, model.classes)
    return params, x, labels


VIT = models.ViTMini(image=(8, 8, 2), patch=4, d=8, heads=2, mlp=12, blocks=2, classes=3)
CNN = models.SmallCNN(image=(8, 8, 2), channels=(3, 4, 4), pool=(True, False, True), classes=3)


@pytest.mark.parametrize("model", [VIT, CNN], ids=["vit", "cnn"])
def test_dfa_on_token_and_image_states(model):
    """DFA's B_l take each block output's shape ([T, d] tokens, [H, W, C] maps); block gradients
    are ∇⟨f_l(h_l), e_T B_l⟩ with h_l held fixed; states follow next_state."""
    params, x, labels = _images(model, 0)
    logits, hidden, branches = model.forward(params, x)
    for l, bp_ in enumerate(params["blocks"]):
        np.testing.assert_allclose(model.next_state(l, bp_, hidden[l]), hidden[l + 1], rtol=1e-12)
    rule = rules.get("dfa", model, penalty=1e-2)
    state = rule.init(jax.random.key(1), params)
    assert [B.shape[1:] for B in state.feedback["blocks"]] == [f.shape[1:] for f in branches]
    _, out = rule.step(params, state, x, labels)
    e_T = (jax.nn.softmax(logits) - jax.nn.one_hot(labels, 3)) / x.shape[0]
    for l, B_l in enumerate(state.feedback["blocks"]):

        def local(bp_, l=l, B_l=B_l):
            f = model.block(l, bp_, hidden[l])
            signal = jnp.tensordot(e_T, B_l, axes=1)
            return jnp.sum(f * signal) + 1e-2 * jnp.mean(jnp.sum(f.reshape(6, -1) ** 2, -1))

        _close(out.grads["blocks"][l], jax.grad(local)(params["blocks"][l]))
    signals = rules.dfa_signals(model, params, state, x, labels)
    np.testing.assert_allclose(signals[0], jnp.tensordot(e_T, state.feedback["blocks"][0], 1))


def _rel_error(grads, ref):
    """Largest |difference| over the largest |entry| of the reference (of all leaves: the key
    bias of attention has gradient exactly 0, so a per-leaf ratio would read rounding noise)."""
    scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(ref))
    return max(
        float(jnp.abs(a - b).max()) / scale
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True)
    )


@pytest.mark.parametrize("model", [None, VIT, CNN], ids=["mlp", "vit", "cnn"])
def test_ep_is_bp_in_the_small_nudge_limit(model):
    """EP on the prediction-error energy: at converged nudged equilibria its estimate tends to
    ∇L as β → 0, with error O(β²) under symmetric nudging, for residual and non-residual
    models; a large nudge is only an estimate."""
    if model is None:
        model, params, x, labels = _problem(3)
    else:
        params, x, labels = _images(model, 3)
    _, ref = rules.get("bp", model).step(params, None, x, labels)
    errors = {}
    for beta in (1e-3, 1e-4):
        rule = rules.get("ep", model, beta=beta, relax_steps=20)
        errors[beta] = _rel_error(
            rule.step(params, rule.init(None, params), x, labels)[1].grads, ref.grads
        )
    # measured (mlp): 1.5e-4 and 1.5e-6 of the largest entry
    assert errors[1e-4] < 1e-5, errors
    assert errors[1e-3] / errors[1e-4] > 50, errors  # second order in β
    coarse = rules.get("ep", model, beta=0.5, relax_steps=8)
    rough = coarse.step(params, coarse.init(None, params), x, labels)[1].grads
    assert _rel_error(rough, ref.grads) > 1e-2


def test_ep_penalty_adds_the_block_penalty_gradient():
    model, params, x, labels = _problem(4)
    plain = rules.get("ep", model, relax_steps=5)
    penalised = rules.get("ep", model, relax_steps=5, penalty=0.3)
    _, a = plain.step(params, plain.init(None, params), x, labels)
    _, b = penalised.step(params, penalised.init(None, params), x, labels)
    _, hidden, _ = model.forward(params, x)
    for l, bp_ in enumerate(params["blocks"]):
        want = jax.grad(
            lambda p, l=l: 0.3 * jnp.mean(jnp.sum(model.block(l, p, hidden[l]) ** 2, -1))
        )(bp_)
        _close(jax.tree.map(jnp.subtract, b.grads["blocks"][l], a.grads["blocks"][l]), want, 1e-9)
    _close(a.grads["head"], b.grads["head"])


@pytest.mark.parametrize("name", ["state_bridge", "credit_bridge"])
def test_bridges_descend_their_local_objective(name):
    """Block l < L−1 gets ∇ of its objective on h_{l+1} (the predictor fixed, h_l fixed), the last
    block the true loss through the head, the embedding the objective on h_0; the predictors
    then take one Adam step on their regression loss, which lowers it."""
    model, params, x, labels = _problem(6)
    rule = rules.get(name, model, penalty=0.01)
    state = rule.init(jax.random.key(2), params)
    new, out = rule.step(params, state, x, labels)
    logits, hidden, _ = model.forward(params, x)
    L = len(params["blocks"])

    def objective(j, h):
        p = state.predictors[j]
        if name == "state_bridge":
            return models.cross_entropy(model.readout(params, h @ p["A"] + p["c"]), labels)
        return jnp.mean(jax.nn.gelu(h @ p["U"] + p["a"]) @ p["v"] + p["c"])

    for l in range(L):

        def local(bp_, l=l):
            f = model.block(l, bp_, hidden[l])
            h = hidden[l] + f
            value = (
                models.cross_entropy(model.readout(params, h), labels)
                if l == L - 1
                else objective(l + 1, h)
            )
            return value + 0.01 * jnp.mean(jnp.sum(f**2, -1))

        _close(out.grads["blocks"][l], jax.grad(local)(params["blocks"][l]), 1e-10)
    embed = jax.grad(lambda p: objective(0, model.embed({"embed": p}, x)))(params["embed"])
    _close(out.grads["embed"], embed, 1e-10)
    later, _ = rule.step(params, new, x, labels)
    assert float(later.fit) < float(new.fit)
    assert len(state.predictors) == L


def test_bridges_refuse_models_with_non_vector_states():
    with pytest.raises(ValueError, match="vector states"):
        rules.get("state_bridge", VIT).init(jax.random.key(0), VIT.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="dense-block model"):
        rules.get("fa", CNN)


def test_auxiliary_networks_must_be_present():
    model, params, _, _ = _problem()
    state = rules.get("dfa", model).init(jax.random.key(0), params)
    rules.auxiliary("dfa", state)
    rules.auxiliary("bp", rules.FeedbackState({}))
    with pytest.raises(ValueError, match="did not persist"):
        rules.auxiliary("dfa", rules.FeedbackState({}))
    with pytest.raises(ValueError, match="did not persist"):
        rules.auxiliary("state_bridge", rules.FeedbackState({}))
