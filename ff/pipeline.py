"""The pipelined per-layer DTG-FF step of paper App. D.7, its naive counterpart, the per-layer
optimizer, and compiled-memory measurement.

Pipelined (`Pipeline.step`), for l = 0 … L−1, one jitted program per layer:
    (L_l, z_l), g_l = value_and_grad(L_l)(θ_l; x̂_{l−1})      forward one layer, local loss
    θ_l ← optimizer_l(θ_l, g_l)                                local update
    x̂_l = propagate_l(stop_gradient(z_l))                     next input from the *pre-step* z_l
then the concat classifier's update on the stop-gradded features f_l = GAP(z_l). Only layer l's
activations live in layer l's program, so activation memory is O(1) in depth.

Naive (`Pipeline.naive_step`, the paper's initial release): the same local update, but the next
input is recomputed after it, x̂_l = propagate_l(z_l(θ_l^new; x̂_{l−1})) (its forward_features
pass; the classifier's features come from it too).

One-step propagation difference (D.7): both schedules give layer 0 identical updates (same input
x, same loss), exactly. For l >= 1 the pipelined input reflects layer l−1's pre-step weights and
the naive one its post-step weights, a perturbation of order lr on the activations. The pipelined
step is *exactly* the joint gradient of `ff.rules.dtg_ff` (every layer's loss on the pre-step
forward pass) followed by each layer's own optimizer update: tests/ff assert both equalities.

Dropout keys are fold_in(key, l) per layer and fold_in(key, L) for the classifier, as in
`DTGNet.objective`, so the schedules and the rule see the same masks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ff.dtg import DTGNet


def per_layer_adamw(
    learning_rate=2e-4, weight_decay=1e-3, steps: int | None = None, final_lr=1e-5
) -> optax.GradientTransformation:
    """AdamW (lr 2e-4, weight decay 1e-3), cosine-annealed to final_lr over `steps` when given
    (the paper's per-layer optimizer, §4.2); one state per layer via `Pipeline.init`."""
    if steps is not None:
        if steps < 1:
            raise ValueError(f"the cosine schedule needs steps >= 1; got {steps}")
        learning_rate = optax.cosine_decay_schedule(
            learning_rate, steps, alpha=final_lr / learning_rate
        )
    return optax.adamw(learning_rate, weight_decay=weight_decay)


class PipelineState(NamedTuple):
    layers: list  # one optimizer state per layer
    classifier: object  # the classifier's optimizer state (() for logit_sum)


class Pipeline(NamedTuple):
    init: callable  # params -> PipelineState
    step: callable  # (params, opt, readout, x, labels, key) -> (params, opt, losses [L], cls [])
    naive_step: callable  # the same signature, post-step propagation
    layer_step: callable  # l -> jitted (θ_l, opt_l, readout_l, x̂_{l−1}, y, key) -> ...
    naive_layer_step: callable  # l -> the naive schedule's layer program, the same signature
    classifier_step: callable  # jitted (θ_c, opt_c, features, y, key) -> (θ_c, opt_c, loss)


def make_pipeline(model: DTGNet, tx: optax.GradientTransformation) -> Pipeline:
    if not isinstance(model, DTGNet):
        raise ValueError(f"the pipelined step trains a DTGNet; got {type(model).__name__}")
    L = model.depth

    def _local(l, layer_params, opt_state, readout_l, x_in, labels):
        (loss, z), g = jax.value_and_grad(model.layer_loss, argnums=1, has_aux=True)(
            l, layer_params, readout_l, x_in, labels
        )
        updates, opt_state = tx.update(g, opt_state, layer_params)
        return optax.apply_updates(layer_params, updates), opt_state, loss, z

    def _pipelined_layer(l, layer_params, opt_state, readout_l, x_in, labels, key):
        new, opt_state, loss, z = _local(l, layer_params, opt_state, readout_l, x_in, labels)
        z = jax.lax.stop_gradient(z)
        x_next = model.backbone.propagate(l, z, jax.random.fold_in(key, l), True)
        return new, opt_state, x_next, model.backbone.features(l, z), loss

    def _naive_layer(l, layer_params, opt_state, readout_l, x_in, labels, key):
        new, opt_state, loss, _ = _local(l, layer_params, opt_state, readout_l, x_in, labels)
        z = jax.lax.stop_gradient(model.backbone.layer(l, new, x_in))
        x_next = model.backbone.propagate(l, z, jax.random.fold_in(key, l), True)
        return new, opt_state, x_next, model.backbone.features(l, z), loss

    pipelined = [jax.jit(functools.partial(_pipelined_layer, l)) for l in range(L)]
    naive = [jax.jit(functools.partial(_naive_layer, l)) for l in range(L)]

    @jax.jit
    def classifier_step(cls_params, opt_state, features, labels, key):
        loss, g = jax.value_and_grad(model.classifier_loss)(
            cls_params, features, labels, jax.random.fold_in(key, L)
        )
        updates, opt_state = tx.update(g, opt_state, cls_params)
        return optax.apply_updates(cls_params, updates), opt_state, loss

    def init(params):
        cls = tx.init(params["classifier"]) if "classifier" in params else ()
        return PipelineState([tx.init(lp) for lp in params["layers"]], cls)

    def _run(layer_fns, params, opt, readout, x, labels, key):
        x_hat = model.backbone.prepare(x)
        layers, states, losses, features = [], [], [], []
        for l in range(L):
            new, s, x_hat, f, loss = layer_fns[l](
                params["layers"][l], opt.layers[l], readout[l], x_hat, labels, key
            )
            layers.append(new)
            states.append(s)
            losses.append(loss)
            if l in model.feature_layers:
                features.append(f)
        out = {**params, "layers": layers}
        cls_state, cls_loss = opt.classifier, jnp.zeros((), losses[0].dtype)
        if model.aggregation == "concat":
            out["classifier"], cls_state, cls_loss = classifier_step(
                params["classifier"], opt.classifier, features, labels, key
            )
        return out, PipelineState(states, cls_state), jnp.stack(losses), cls_loss

    return Pipeline(
        init,
        functools.partial(_run, pipelined),
        functools.partial(_run, naive),
        lambda l: pipelined[l],
        lambda l: naive[l],
        classifier_step,
    )


MEMORY_FIELDS = {
    "temp_bytes": "temp_size_in_bytes",
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "code_bytes": "generated_code_size_in_bytes",
}


def compiled_memory(fn, *args) -> dict:
    """`jax.jit(fn).lower(*args).compile().memory_analysis()` as a dict of byte counts
    (temp, argument, output, alias, code) plus total = temp + argument + output − alias.
    args may be arrays or jax.ShapeDtypeStruct."""
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    if stats is None:
        raise ValueError(f"this backend ({jax.default_backend()}) gives no memory_analysis")
    out = {name: int(getattr(stats, attr, 0) or 0) for name, attr in MEMORY_FIELDS.items()}
    out["total_bytes"] = (
        out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
    )
    return out


def _shapes(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def pipeline_memory(
    pipeline: Pipeline, model: DTGNet, params, opt, readout, x, labels, key, naive=False
):
    """[compiled_memory of layer l's pipelined (naive=True: naive) program for l = 0 … L−1] on
    this batch's shapes; the step's peak is the max over layers (one program runs at a time).
    Each entry also holds the program's XLA cost-analysis "flops"."""
    layer_step = pipeline.naive_layer_step if naive else pipeline.layer_step
    x_hat = jax.eval_shape(model.backbone.prepare, x)
    out = []
    for l in range(model.depth):
        args = _shapes((params["layers"][l], opt.layers[l], readout[l], x_hat, labels, key))
        memory = compiled_memory(layer_step(l), *args)
        out.append({**memory, "flops": compiled_flops(layer_step(l), *args)})
        x_hat = jax.eval_shape(layer_step(l), *args)[2]
    return out


def compiled_flops(fn, *args) -> float:
    """XLA's cost-analysis FLOPs of `jax.jit(fn)` on args (arrays or ShapeDtypeStruct); nan where
    the backend gives none."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", float("nan")))
