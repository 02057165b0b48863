"""The pipelined per-layer step (paper App. D.7) against the joint rule and the naive schedule.

Exact: the pipelined step == `dtg_ff`'s joint gradient (every layer's loss on the pre-step
forward pass) followed by each layer's own optimizer update, for every layer and the classifier;
and the naive step (next input recomputed with the post-step weights) == the pipelined one at
layer 0. Documented difference: for l >= 1 the naive input moved by layer l−1's update, so with
SGD the parameter difference after one step is O(lr²) (lr · O(lr) in the gradient); measured
ratio ≈ 100 between lr = 1e-2 and 1e-3."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ff import baselines, pipeline, rules, synthetic
from ff.dtg import DTGNet
from tests.ff.conftest import B, K
from tests.ff.conftest import close as _close


def _setup(model, seed=0):
    key = jax.random.key(seed)
    params = model.init(key, jnp.float64)
    rule = rules.get("dtg_ff", model)
    state = rule.init(jax.random.fold_in(key, 1), params)
    x = jax.random.uniform(jax.random.fold_in(key, 2), (B, *model.backbone.input_shape))
    return rule, params, state, x.astype(jnp.float64), jnp.asarray([0, 1, 2, 1])


def test_pipelined_step_is_the_joint_gradient_then_per_layer_updates():
    # every path of the pipeline on a cheap backbone: inter-layer LN and dropout in propagation
    # (the rule and the schedules must draw the same masks), the concat classifier on layer 1
    backbone = synthetic.Dense(5, (6, 6), interlayer_norm=True, dropout=0.1)
    model = DTGNet(backbone, K, aggregation="concat")
    rule, params, state, x, y = _setup(model)
    _, out = jax.jit(rule.step)(params, state, x, y)
    tx = pipeline.per_layer_adamw(1e-2, weight_decay=1e-3, steps=10)
    pipe = pipeline.make_pipeline(model, tx)
    opt = pipe.init(params)
    key = rules.step_key(state)
    got, _, losses, cls_loss = pipe.step(params, opt, state.readout, x, y, key)

    @jax.jit
    def joint_update(grads):
        new = []
        for lp, g, s in zip(params["layers"], grads["layers"], opt.layers, strict=True):
            u, _ = tx.update(g, s, lp)
            new.append(optax.apply_updates(lp, u))
        u, _ = tx.update(grads["classifier"], opt.classifier, params["classifier"])
        return new, optax.apply_updates(params["classifier"], u)

    layers, classifier = joint_update(out.grads)
    _close(got["layers"], layers)
    _close(got["classifier"], classifier)
    assert float(jnp.sum(losses) + cls_loss) == pytest.approx(float(out.loss), rel=1e-12)

    naive, _, naive_losses, _ = pipe.naive_step(params, opt, state.readout, x, y, key)
    _close(naive["layers"][0], got["layers"][0], rtol=0, atol=0)  # layer 0: identical
    assert float(naive_losses[0]) == float(losses[0])
    assert np.max(np.abs(naive["layers"][1]["W"] - got["layers"][1]["W"])) > 0


def test_naive_minus_pipelined_is_second_order_in_the_learning_rate():
    model = synthetic.dtg_student(K, d_in=5, width=6, depth=2)
    _, params, state, x, y = _setup(model, 3)
    key = rules.step_key(state)
    # the learning rate lives in the optimizer state: one pipeline, compiled once, for both
    pipe = pipeline.make_pipeline(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.0))
    diffs = []
    for lr in (1e-2, 1e-3):
        opt = pipe.init(params)
        opt = opt._replace(layers=[_with_lr(s, lr) for s in opt.layers])
        a = pipe.step(params, opt, state.readout, x, y, key)[0]
        b = pipe.naive_step(params, opt, state.readout, x, y, key)[0]
        np.testing.assert_array_equal(a["layers"][0]["W"], b["layers"][0]["W"])
        assert np.max(np.abs(a["layers"][0]["W"] - params["layers"][0]["W"])) > 0  # it moved
        diffs.append(float(jnp.max(jnp.abs(a["layers"][1]["W"] - b["layers"][1]["W"]))))
    assert diffs[1] > 0
    assert 50 < diffs[0] / diffs[1] < 200, diffs  # O(lr²): ×100 for ×10 in lr


def _with_lr(opt_state, lr):
    old = opt_state.hyperparams["learning_rate"]
    hyper = {**opt_state.hyperparams, "learning_rate": jnp.asarray(lr, old.dtype)}
    return opt_state._replace(hyperparams=hyper)


def test_compiled_memory_of_pipelined_layers_is_constant_in_depth_and_bp_grows():
    model = synthetic.dtg_student(K, d_in=8, width=8, depth=4)
    _, params, state, x, y = _setup(model, 4)
    pipe = pipeline.make_pipeline(model, optax.sgd(1e-2))
    mem = pipeline.pipeline_memory(
        pipe, model, params, pipe.init(params), state.readout, x, y, rules.step_key(state)
    )
    assert len(mem) == 4 and all(m["total_bytes"] > 0 for m in mem)
    assert mem[1] == mem[2] == mem[3]  # equal-width layers: one layer's program, any depth
    totals = []
    for depth in (2, 4):
        net = baselines.BPNet(synthetic.Dense(8, (8,) * depth), K)
        rule = rules.get("bp", net)
        p = net.init(jax.random.key(0), jnp.float64)
        s = rule.init(jax.random.key(1), p)
        totals.append(pipeline.compiled_memory(rule.step, p, s, x, y)["total_bytes"])
    assert totals[1] > totals[0]
