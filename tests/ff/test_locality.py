"""Every layer-local update equals jax.grad of that layer's loss with its input stop-gradded, and no
gradient crosses a layer (float64). The oracle builds each layer's input by hand from the backbone
pieces and differentiates one layer's loss alone."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff import baselines, mlp, rules, synthetic
from ff import goodness as gd
from tests.ff.conftest import B, K
from tests.ff.conftest import close as _close
from tests.ff.conftest import data as _data


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


DENSE = {  # two layers: the second's input is the first's propagated output
    "dtg_student": lambda: synthetic.dtg_student(K, d_in=5, width=6, depth=2),
    # the ablation switches on the cheap backbone: T = 1, inter-layer LN on, R̃_l normalised
    "dtg_student_ablations": lambda: dataclasses.replace(
        synthetic.dtg_student(K, d_in=5, width=6, depth=2),
        fixed_temperature=True,
        normalise_readout=True,
        backbone=synthetic.Dense(5, (6, 6), interlayer_norm=True, dropout=0.1),
    ),
}


def _dtg_setup(name, tiny_cnn):
    """(model, params, state, x, y, the rule's step output, the oracle) for one model; the CNN's
    setup is the session's (tests/ff/conftest.py), a dense one's a single jitted program."""
    if name == "dtg_cnn_concat":
        t = tiny_cnn
        oracle = jax.jit(
            lambda p, s: _dtg_oracle(t.model, p, s.readout, t.x, t.y, rules.step_key(s))
        )(t.params, t.state)
        return t.model, t.params, t.state, t.x, t.y, t.out, oracle
    model = DENSE[name]()
    key = jax.random.key(1)
    params = model.init(key, jnp.float64)
    rule = rules.get("dtg_ff", model)
    state = rule.init(jax.random.fold_in(key, 2), params)
    x, y = _data(model.backbone.input_shape)

    @jax.jit
    def run(p, s):
        oracle = _dtg_oracle(model, p, s.readout, x, y, rules.step_key(s))
        return rule.step(p, s, x, y)[1], oracle

    out, oracle = run(params, state)
    return model, params, state, x, y, out, oracle


@pytest.mark.parametrize("name", ["dtg_cnn_concat", *DENSE])
def test_dtg_layer_updates_are_jax_grad_of_the_layer_loss(name, tiny_cnn):
    model, params, state, x, y, out, (oracle, cls_oracle) = _dtg_setup(name, tiny_cnn)
    _close(out.grads["layers"], oracle)
    for g in out.grads["layers"]:
        assert np.linalg.norm(g["W"]) > 1e-6  # every layer learns
        if model.fixed_temperature:
            assert float(g["alpha"]) == 0.0
    if "classifier" in params:
        _close(out.grads["classifier"], cls_oracle)
        # the concat classifier reads layers 1 … L−1: layer 1's GAP width 4, not layer 0's 3
        assert params["classifier"]["W"].shape == (4, K)


@pytest.mark.parametrize("name", ["dtg_cnn_concat", "dtg_student_ablations"])
def test_no_gradient_crosses_a_layer(name, tiny_cnn):
    if name == "dtg_cnn_concat":
        model, params = tiny_cnn.model, tiny_cnn.params
    else:
        model = DENSE[name]()
        params = model.init(jax.random.key(4), jnp.float64)
    key = jax.random.key(4)
    readout = model.init_readout(jax.random.fold_in(key, 1), jnp.float64)
    x, y = _data(model.backbone.input_shape, 2)
    L = model.depth
    # row 0: every loss weight 1; row 1 + l: layer l's loss weight 3
    weights = jnp.concatenate([jnp.ones((1, L)), jnp.ones((L, L)) + 2 * jnp.eye(L)])

    @jax.jit
    def grads(weights):  # one compiled body for every row (lax.map), so exact comparisons hold
        def one(w):
            return jax.grad(lambda p: model.objective(p, readout, x, y, key, w)[0])(params)

        return jax.lax.map(one, weights)

    every = grads(weights)
    row = lambda i: jax.tree.map(lambda g: g[i], every)  # noqa: E731
    base = row(0)
    for l in range(L):
        bumped = row(1 + l)
        for k in range(L):
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
    model = mlp.FFMLP(d_in=7, widths=(6, 5), classes=K)
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
    # Eq. 9: the classifier reads BN_i(W_i x̂_{i−1}) for i < L−1, so it reaches layer 0 but not
    # the last layer, whose gradient is λ_ff ∇L_{L−1} alone; α and θ_0 only by FF
    assert np.linalg.norm(cls["layers"][0]["W"]) > 1e-6
    assert np.all(np.asarray(cls["layers"][1]["W"]) == 0)
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
    # the rules are backbone-agnostic: a dense stack with inter-layer LN (no dropout, so
    # accumulation is exact); the CNN's BP heads read the same BPNet code
    key = jax.random.key(7)
    x, y = _data((5,), 5)
    single = baselines.BPNet(synthetic.Dense(5, (6, 6), interlayer_norm=True), K)
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
