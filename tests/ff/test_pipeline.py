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

from ff import baselines, cnn, pipeline, rules, synthetic

K, B = 3, 4


def _close(a, b, rtol=1e-12, atol=1e-14):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _setup(model, seed=0):
    key = jax.random.key(seed)
    params = jax.jit(model.init, static_argnums=1)(key, jnp.float64)
    rule = rules.get("dtg_ff", model)
    state = jax.jit(rule.init)(jax.random.fold_in(key, 1), params)
    x = jax.random.uniform(jax.random.fold_in(key, 2), (B, *model.backbone.input_shape))
    return rule, params, state, x.astype(jnp.float64), jnp.asarray([0, 1, 2, 1])


def test_pipelined_step_is_the_joint_gradient_then_per_layer_updates():
    model = cnn.dtg_cnn(K, widths=(3, 4, 5), pool_after=(0,), image=(4, 4), in_channels=2)
    rule, params, state, x, y = _setup(model)
    tx = pipeline.per_layer_adamw(1e-2, weight_decay=1e-3, steps=10)
    pipe = pipeline.make_pipeline(model, tx)
    opt = pipe.init(params)
    key = rules.step_key(state)
    got, _, losses, cls_loss = pipe.step(params, opt, state.readout, x, y, key)
    _, out = jax.jit(rule.step)(params, state, x, y)

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
    model = synthetic.dtg_student(K, d_in=5, width=6, depth=3)
    _, params, state, x, y = _setup(model, 3)
    key = rules.step_key(state)
    diffs = []
    for lr in (1e-2, 1e-3):
        pipe = pipeline.make_pipeline(model, optax.sgd(lr))
        opt = pipe.init(params)
        a = pipe.step(params, opt, state.readout, x, y, key)[0]
        b = pipe.naive_step(params, opt, state.readout, x, y, key)[0]
        np.testing.assert_array_equal(a["layers"][0]["W"], b["layers"][0]["W"])
        diffs.append(float(jnp.max(jnp.abs(a["layers"][1]["W"] - b["layers"][1]["W"]))))
    assert diffs[1] > 0
    assert 50 < diffs[0] / diffs[1] < 200, diffs  # O(lr²): ×100 for ×10 in lr


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
    for depth in (2, 6):
        net = baselines.BPNet(synthetic.Dense(8, (8,) * depth), K)
        rule = rules.get("bp", net)
        p = net.init(jax.random.key(0), jnp.float64)
        s = rule.init(jax.random.key(1), p)
        totals.append(pipeline.compiled_memory(rule.step, p, s, x, y)["total_bytes"])
    assert totals[1] > totals[0]
