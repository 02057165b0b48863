"""The ff learning rules in the shared contract (README, "The runner and the rule contract"):

    rule = ff.rules.get(name, model, **options)
    state = rule.init(key, params)
    state, out = rule.step(params, state, x, labels)   # out.grads like params, out.loss []

Every rule's state carries its key (raw uint32 data) and a step counter; the step's randomness
(dropout, negative labels) is fold_in(key, step), so a step is a pure function of its inputs.

- dtg_ff (DTGNet: the DTG-CNN or the synthetic DTG student): grads of Σ_l L_l + L_cls with every
  layer's input and the classifier's features stop-gradded, so layer l's gradient is ∇ L_l alone;
  the fixed random readouts R_l, b_l ~ N(0, 1/K) are drawn at init and live in the state.
  out.loss = Σ_l L_l + L_cls.
- ff_mlp (FFMLP, DTG): grads of λ_ff Σ_l L_l + L_cls (Eq. 9); the FF part is layer-local, the
  hybrid classifier backpropagates through the layer weights. Warm-start θ_0 with
  `ff.mlp.FFMLP.warm_start` on the first batch before training (a rule returns gradients, not
  parameters).
- hinton_ff (FFMLP with plain=True, `ff.mlp.hinton`): grads of Σ_l L_l, T = 1, fixed threshold.
- bp / bp_deepsup (BPNet with head "single" / "deepsup"): end-to-end grads of CE / Σ_l CE_l.
- bp_checkpoint (BPNet, either head): the same loss with every layer under `jax.checkpoint`;
  gradients equal bp's.
- bp_accumulate (BPNet, either head; micro_batches n, default 2): the batch split into n equal
  micro-batches, grads and loss the mean over them, accumulated in a `lax.scan` (the paper's
  BP + gradient accumulation, micro-batch 64 × 2); equal to the full-batch gradient when the loss
  is a batch mean and there is no dropout (BatchNorm is not in these backbones).
- bp_ensemble (Ensemble): grads of the members' summed losses (each member gets its own).

The optimizer is not part of a rule (paper: per-layer AdamW with cosine decay; `ff.pipeline`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ff.baselines import BPNet, Ensemble
from ff.dtg import DTGNet
from ff.mlp import FFMLP


class StepOutput(NamedTuple):
    grads: dict
    loss: jax.Array


class Rule(NamedTuple):
    name: str
    init: callable
    step: callable


class KeyState(NamedTuple):
    key: jax.Array  # uint32 [2], raw key data
    step: jax.Array  # int32 [], steps taken


class DTGState(NamedTuple):
    readout: list  # [{"R" [m_l, K], "b" [K]}] per layer, fixed
    key: jax.Array  # uint32 [2], raw key data
    step: jax.Array  # int32 []


def _dtype(params):
    return jax.tree.leaves(params)[0].dtype


def _key_state(key):
    return KeyState(jax.random.key_data(key), jnp.zeros((), jnp.int32))


def step_key(state) -> jax.Array:
    """The typed key of the state's current step: fold_in(key, step)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)


def _require(model, kind, name, hint):
    if not isinstance(model, kind):
        got = type(model).__name__
        raise ValueError(f"{name} needs a {kind.__name__} model; got {got}: {hint}")


def dtg_ff(model) -> Rule:
    _require(model, DTGNet, "dtg_ff", "build one with ff.cnn.dtg_cnn or ff.synthetic.dtg_student")

    def init(key, params):
        kr, ks = jax.random.split(key)
        return DTGState(model.init_readout(kr, _dtype(params)), *_key_state(ks))

    def step(params, state, x, labels):
        def loss(p):
            return model.objective(p, state.readout, x, labels, step_key(state))[0]

        value, grads = jax.value_and_grad(loss)(params)
        return state._replace(step=state.step + 1), StepOutput(grads, value)

    return Rule("dtg_ff", init, step)


def _ff_mlp(model, name, plain) -> Rule:
    _require(model, FFMLP, name, "build one with ff.mlp.FFMLP or ff.mlp.hinton")
    if model.plain != plain:
        fix = "ff.mlp.hinton(...)" if plain else "FFMLP(..., plain=False)"
        raise ValueError(
            f"{name} needs an FFMLP with plain={plain}; got plain={model.plain}: use {fix}"
        )

    def init(key, params):
        return _key_state(key)

    def step(params, state, x, labels):
        def loss(p):
            return model.objective(p, x, labels, step_key(state))[0]

        value, grads = jax.value_and_grad(loss)(params)
        return state._replace(step=state.step + 1), StepOutput(grads, value)

    return Rule(name, init, step)


def ff_mlp(model) -> Rule:
    return _ff_mlp(model, "ff_mlp", plain=False)


def hinton_ff(model) -> Rule:
    return _ff_mlp(model, "hinton_ff", plain=True)


def _loss_rule(model, name) -> Rule:
    def init(key, params):
        return _key_state(key)

    def step(params, state, x, labels):
        value, grads = jax.value_and_grad(model.loss)(params, x, labels, step_key(state))
        return state._replace(step=state.step + 1), StepOutput(grads, value)

    return Rule(name, init, step)


def _require_head(model, name, head):
    _require(model, BPNet, name, "build one with ff.cnn.bp_cnn or ff.synthetic.bp_student")
    if head is not None and model.head != head:
        raise ValueError(f"{name} needs BPNet(head={head!r}); got head={model.head!r}")


def bp(model) -> Rule:
    _require_head(model, "bp", "single")
    return _loss_rule(model, "bp")


def bp_deepsup(model) -> Rule:
    _require_head(model, "bp_deepsup", "deepsup")
    return _loss_rule(model, "bp_deepsup")


def bp_checkpoint(model) -> Rule:
    _require_head(model, "bp_checkpoint", None)
    return _loss_rule(dataclasses.replace(model, checkpoint=True), "bp_checkpoint")


def bp_accumulate(model, micro_batches: int = 2) -> Rule:
    _require_head(model, "bp_accumulate", None)
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1; got {micro_batches}")
    n = micro_batches
    grad_fn = jax.value_and_grad(model.loss)

    def body(carry, inputs):
        # defined once per rule, so an eager step reuses the scan's trace
        params, key, total, acc = carry
        i, xb, yb = inputs
        k = jax.random.fold_in(jax.random.wrap_key_data(key), i)
        value, grads = grad_fn(params, xb, yb, k)
        return (params, key, total + value, jax.tree.map(jnp.add, acc, grads)), None

    def init(key, params):
        return _key_state(key)

    def step(params, state, x, labels):
        if x.shape[0] % n:
            raise ValueError(
                f"bp_accumulate splits the batch into {n} equal micro-batches; batch "
                f"{x.shape[0]} is not divisible: change the batch or micro_batches"
            )
        xs = x.reshape(n, x.shape[0] // n, *x.shape[1:])
        ys = labels.reshape(n, -1)
        key = jax.random.key_data(step_key(state))
        zero = (params, key, jnp.zeros((), _dtype(params)), jax.tree.map(jnp.zeros_like, params))
        (_, _, total, acc), _ = jax.lax.scan(body, zero, (jnp.arange(n), xs, ys))
        grads = jax.tree.map(lambda g: g / n, acc)
        return state._replace(step=state.step + 1), StepOutput(grads, total / n)

    return Rule("bp_accumulate", init, step)


def bp_ensemble(model) -> Rule:
    _require(model, Ensemble, "bp_ensemble", "build one with ff.cnn.bp_ensemble_cnn")
    return _loss_rule(model, "bp_ensemble")


RULES = {
    "dtg_ff": dtg_ff,
    "ff_mlp": ff_mlp,
    "hinton_ff": hinton_ff,
    "bp": bp,
    "bp_deepsup": bp_deepsup,
    "bp_checkpoint": bp_checkpoint,
    "bp_accumulate": bp_accumulate,
    "bp_ensemble": bp_ensemble,
}


def get(name: str, model, **options) -> Rule:
    if name not in RULES:
        raise ValueError(f"unknown ff rule {name!r}; known: {sorted(RULES)}")
    factory = RULES[name]
    try:
        inspect.signature(factory).bind(model, **options)
    except TypeError as err:
        raise ValueError(f"rule {name!r} does not take options {sorted(options)}: {err}") from None
    return factory(model, **options)
