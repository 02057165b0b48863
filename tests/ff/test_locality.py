"""Every layer-local update equals jax.grad of that layer's loss with its input stop-gradded, and no
gradient crosses a layer (float64). The oracle builds each layer's input by hand from the backbone
pieces and differentiates one layer's loss alone."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff import cnn, mlp, rules, synthetic
from ff import goodness as gd

K, B = 3, 4
TINY_CNN = dict(widths=(3, 4, 5), pool_after=(0,), image=(4, 4), in_channels=2)


def _close(a, b, rtol=1e-12, atol=1e-14):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _data(shape, seed=0):
    key = jax.random.key(seed)
    x = jax.random.uniform(jax.random.fold_in(key, 1), (B, *shape), jnp.float64)
    return x, jnp.asarray([0, 1, 2, 1])


def _dtg_oracle(model, params, readout, x, y, key):
    """([∇_θl L_l(θ_l; x̂_{l−1})], ∇_c L_cls): each layer's loss differentiated alone, its input
    x̂_{l−1} built layer by layer outside the differentiated function (a constant)."""
    x_hat, grads, feats = model.backbone.prepare(x), [], []
    for l in range(model.depth):

        def loss(lp, l=l, x_in=x_hat):
            return model.layer_loss(l, lp, readout[l], x_in, y)[0]

        grads.append(jax.grad(loss)(params["layers"][l]))
        z = model.backbone.layer(l, params["layers"][l], x_hat)
        if l in model.feature_layers:
            feats.append(model.backbone.features(l, z))
        x_hat = model.backbone.propagate(l, z, jax.random.fold_in(key, l), True)
    if "classifier" not in params:
        return grads, None
    cls_key = jax.random.fold_in(key, model.depth)
    return grads, jax.grad(model.classifier_loss)(params["classifier"], feats, y, cls_key)


MODELS = {
    "dtg_cnn_concat": lambda: cnn.dtg_cnn(K, **TINY_CNN),
    "dtg_student": lambda: synthetic.dtg_student(K, d_in=5, width=6, depth=3),
    # the ablation switches on the cheap backbone: T = 1, inter-layer LN on, R̃_l normalised
    "dtg_student_ablations": lambda: dataclasses.replace(
        synthetic.dtg_student(K, d_in=5, width=6, depth=3),
        fixed_temperature=True,
        normalise_readout=True,
        backbone=synthetic.Dense(5, (6, 6, 6), interlayer_norm=True, dropout=0.1),
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_dtg_layer_updates_are_jax_grad_of_the_layer_loss(name):
    model = MODELS[name]()
    key = jax.random.key(1)
    params = jax.jit(model.init, static_argnums=1)(key, jnp.float64)
    rule = rules.get("dtg_ff", model)
    state = jax.jit(rule.init)(jax.random.fold_in(key, 2), params)
    x, y = _data(model.backbone.input_shape)
    _, out = jax.jit(rule.step)(params, state, x, y)
    oracle, cls_oracle = jax.jit(
        lambda p, s: _dtg_oracle(model, p, s.readout, x, y, rules.step_key(s))
    )(params, state)
    _close(out.grads["layers"], oracle)
    for g in out.grads["layers"]:
        assert np.linalg.norm(g["W"]) > 1e-6  # every layer learns
        if model.fixed_temperature:
            assert float(g["alpha"]) == 0.0
    if "classifier" in params:
        _close(out.grads["classifier"], cls_oracle)
        # the concat classifier reads layers 1 … L−1: GAP widths 4 + 5
        assert params["classifier"]["W"].shape == (9, K)


@pytest.mark.parametrize("name", ["dtg_cnn_concat", "dtg_student_ablations"])
def test_no_gradient_crosses_a_layer(name):
    model = MODELS[name]()
    key = jax.random.key(4)
    params = jax.jit(model.init, static_argnums=1)(key, jnp.float64)
    readout = jax.jit(model.init_readout, static_argnums=1)(jax.random.fold_in(key, 1), jnp.float64)
    x, y = _data(model.backbone.input_shape, 2)

    @jax.jit
    def grads(weights):
        return jax.grad(lambda p: model.objective(p, readout, x, y, key, weights)[0])(params)

    base = grads(jnp.ones(model.depth))
    for l in range(model.depth):
        bumped = grads(jnp.ones(model.depth).at[l].set(3.0))
        for k in range(model.depth):
            if k == l:  # its own gradient triples, exactly linear in its weight
                _close(bumped["layers"][k], jax.tree.map(lambda g: 3 * g, base["layers"][k]))
            else:
                _close(bumped["layers"][k], base["layers"][k], rtol=0, atol=0)
        if "classifier" in params:
            _close(bumped["classifier"], base["classifier"], rtol=0, atol=0)


def _mlp_oracle(model, params, x, y, key):
    """[∇ L_l] per layer, each layer's loss differentiated alone on its built inputs."""
    x_pos, x_neg = model.passes(x, y, key)
    grads = []
    for lp in params["layers"]:
        a, b = x_pos, x_neg
        grads.append(jax.grad(lambda p, a=a, b=b: model.layer_loss(p, a, b)[0])(lp))
        _, (z_pos, z_neg) = model.layer_loss(lp, x_pos, x_neg)
        x_pos, x_neg = model.propagate(z_pos), model.propagate(z_neg)
    return grads


def test_ff_mlp_ff_part_is_local_and_the_hybrid_head_backpropagates():
    model = mlp.FFMLP(d_in=7, widths=(6, 5, 4), classes=K)
    key = jax.random.key(5)
    x, y = _data((7,), 3)
    rule = rules.get("ff_mlp", model)

    @jax.jit
    def run(key):
        params = model.warm_start(model.init(key, jnp.float64), x, y, key)
        state = rule.init(key, params)
        _, out = rule.step(params, state, x, y)
        step_key = rules.step_key(state)
        local = _mlp_oracle(model, params, x, y, step_key)
        ff_only = jax.grad(lambda p: model.objective(p, x, y, step_key, classifier_weight=0.0)[0])
        cls = jax.grad(lambda p: gd.cross_entropy(model.classifier_logits(p, x), y))(params)
        return out, local, ff_only(params), cls

    out, local, ff_only, cls = run(key)
    _close(ff_only["layers"], [jax.tree.map(lambda g: 0.1 * g, g) for g in local])
    _close(out.grads, jax.tree.map(jnp.add, ff_only, cls))
    # Eq. 9: the classifier reads BN_i(W_i x̂_{i−1}) for i < L−1, so it reaches layers 0 and 1
    # but not the last layer, whose gradient is λ_ff ∇L_{L−1} alone; α and θ_0 only by FF
    assert np.linalg.norm(cls["layers"][0]["W"]) > 1e-6
    assert np.linalg.norm(cls["layers"][1]["W"]) > 1e-6
    assert np.all(np.asarray(cls["layers"][2]["W"]) == 0)
    for lp in cls["layers"]:
        assert float(lp["alpha"]) == 0.0 and float(lp["theta0"]) == 0.0


def test_hinton_ff_is_layer_local_with_unit_temperature_and_fixed_threshold():
    model = mlp.hinton(7, (6, 5), K)
    key = jax.random.key(6)
    x, y = _data((7,), 4)
    rule = rules.get("hinton_ff", model)

    @jax.jit
    def run(key):
        params = model.init(key, jnp.float64)
        state = rule.init(key, params)
        out = rule.step(params, state, x, y)[1]
        return params, out, _mlp_oracle(model, params, x, y, rules.step_key(state))

    params, out, oracle = run(key)
    _close(out.grads["layers"], oracle)
    for g in out.grads["layers"]:
        assert float(g["alpha"]) == 0.0 and float(g["theta0"]) == 0.0

    # goodness-sum inference: score_k = Σ_l g_l(overlay(x, k)), T = 1
    def by_hand(params):
        h = gd.overlay_label(x, jnp.full((B,), 2), K)
        want = 0.0
        for lp in params["layers"]:
            g, z = model.layer_goodness(lp, h)
            want, h = want + g, model.propagate(z)
        return want

    scores = jax.jit(model.goodness_scores)(params, x)
    np.testing.assert_allclose(scores[:, 2], jax.jit(by_hand)(params), rtol=1e-12)


def test_bp_variants_are_the_end_to_end_gradient():
    bb = dict(widths=(3, 4), pool_after=(0,), image=(4, 4), in_channels=2)
    key = jax.random.key(7)
    x, y = _data((4, 4, 2), 5)
    single = cnn.bp_cnn(K, dropout=0.0, **bb)  # no dropout: accumulation is then exact
    deep = dataclasses.replace(single, head="deepsup")
    names = ("bp", "bp_checkpoint", "bp_accumulate")

    @jax.jit
    def run(key):
        params, dp = single.init(key, jnp.float64), deep.init(key, jnp.float64)
        ref = jax.grad(single.loss)(params, x, y, key)
        got = {}
        for name in names:
            rule = rules.get(name, single)
            got[name] = rule.step(params, rule.init(key, params), x, y)[1]
        rule = rules.get("bp_deepsup", deep)
        got["bp_deepsup"] = rule.step(dp, rule.init(key, dp), x, y)[1]
        deep_ref = jax.grad(
            lambda p: sum(gd.cross_entropy(c, y) for c in deep.head_logits(p, x, key, False))
        )(dp)
        return ref, deep_ref, got, deep.head_logits(dp, x, key, False), deep.logits(dp, x)

    ref, deep_ref, got, heads, summed = run(key)
    for name in names:
        _close(got[name].grads, ref, rtol=1e-10)
        assert float(got[name].loss) == pytest.approx(float(got["bp"].loss), rel=1e-12)
    _close(got["bp_deepsup"].grads, deep_ref)
    np.testing.assert_allclose(summed, heads[0] + heads[1], rtol=1e-12)
