"""Credit-assignment methods as rules of the shared contract (`init(key, params) -> state`,
`step(params, state, x, labels) -> (state, out)`, out.grads like params, out.loss), for a model
of `fa_audit.models` (embed / block / readout / forward).

- bp: out.grads = jax.grad of the mean cross-entropy.
- fa (Lillicrap et al. 2016): the backward pass of every dense map inside the blocks and the
  embedding uses a fixed random matrix B of the weight's shape in place of W (δ_in = δ_out Bᵀ),
  weight gradients x ᵀ δ as usual; the head and every norm backpropagate exactly.
- dfa (Nøkland 2016), as the audit paper writes it: the output error e_T = ∂L/∂logits [B, K] is
  sent through a fixed random B_l [K, d] to every block, whose local loss is
  ⟨f_l(h_l), e_T B_l⟩ summed over the batch (h_l stop-gradded: no gradient crosses blocks), and
  ⟨h_0, e_T B_emb⟩ for the embedding; the head gets its exact gradient.
Every local method takes `penalty` λ: + λ ‖f_l(h_l)‖² (mean over the batch) per block, the
paper's residual-stream penalty. The random feedback lives in the rule's state, so checkpoints
carry it (pitfall 7); B entries ~ N(0, 1/fan).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fa_audit.models import cross_entropy


class StepOutput(NamedTuple):
    grads: dict
    loss: jax.Array


class Rule(NamedTuple):
    name: str
    init: callable
    step: callable


class FeedbackState(NamedTuple):
    feedback: dict  # the fixed random matrices, persisted with the rule


def _normal(key, shape, fan, dtype):
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(fan, dtype))


def bp(model) -> Rule:
    def init(key, params):
        return FeedbackState({})

    def step(params, state, x, labels):
        def loss(p):
            return cross_entropy(model.forward(p, x)[0], labels)

        value, grads = jax.value_and_grad(loss)(params)
        return state, StepOutput(grads, value)

    return Rule("bp", init, step)


@jax.custom_vjp
def _fa_matmul(x, W, B):
    return x @ W


def _fa_fwd(x, W, B):
    return x @ W, (x, B)


def _fa_bwd(res, g):
    x, B = res
    return g @ B.T, x.T @ g, jnp.zeros_like(B)


_fa_matmul.defvjp(_fa_fwd, _fa_bwd)


def fa(model, penalty: float = 0.0) -> Rule:
    from fa_audit.models import layer_norm

    def init(key, params):
        keys = jax.random.split(key, 2 * len(params["blocks"]) + 1)
        W = params["embed"]["W"]
        feedback = {"embed": _normal(keys[-1], W.shape, W.shape[1], W.dtype), "blocks": []}
        for l, block in enumerate(params["blocks"]):
            feedback["blocks"].append(
                {
                    "W1": _normal(keys[2 * l], block["W1"].shape, block["W1"].shape[1], W.dtype),
                    "W2": _normal(
                        keys[2 * l + 1], block["W2"].shape, block["W2"].shape[1], W.dtype
                    ),
                }
            )
        return FeedbackState(feedback)

    def step(params, state, x, labels):
        B = state.feedback

        def loss(p):
            h = _fa_matmul(x, p["embed"]["W"], B["embed"]) + p["embed"]["b"]
            extra = 0.0
            for bp_, bb in zip(p["blocks"], B["blocks"], strict=True):
                z = jax.nn.gelu(_fa_matmul(layer_norm(h), bp_["W1"], bb["W1"]) + bp_["b1"])
                f = _fa_matmul(z, bp_["W2"], bb["W2"]) + bp_["b2"]
                extra = extra + penalty * jnp.mean(jnp.sum(f**2, axis=-1))
                h = h + f
            return cross_entropy(model.readout(p, h), labels) + extra, None

        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return state, StepOutput(grads, value)

    return Rule("fa", init, step)


def dfa(model, penalty: float = 0.0) -> Rule:
    def init(key, params):
        keys = jax.random.split(key, len(params["blocks"]) + 1)
        K, d = params["head"]["W"].shape[1], params["head"]["W"].shape[0]
        dtype = params["head"]["W"].dtype
        return FeedbackState(
            {
                "embed": _normal(keys[-1], (K, d), K, dtype),
                "blocks": [_normal(k, (K, d), K, dtype) for k in keys[:-1]],
            }
        )

    def step(params, state, x, labels):
        logits, hidden, _ = model.forward(params, x)
        value = cross_entropy(logits, labels)
        e_T = jax.grad(lambda z: cross_entropy(z, labels))(logits)  # [B, K], ∂L/∂logits
        head_grads = jax.grad(
            lambda p: cross_entropy(model.readout(p, jax.lax.stop_gradient(hidden[-1])), labels)
        )(params)["head"]

        def block_loss(block_params, h_l, B_l):
            f = model.block(block_params, jax.lax.stop_gradient(h_l))
            signal = jax.lax.stop_gradient(e_T @ B_l)  # [B, d]
            return jnp.sum(f * signal) + penalty * jnp.mean(jnp.sum(f**2, axis=-1))

        blocks = [
            jax.grad(block_loss)(bp_, h_l, B_l)
            for bp_, h_l, B_l in zip(
                params["blocks"], hidden[:-1], state.feedback["blocks"], strict=True
            )
        ]
        embed = jax.grad(
            lambda p: jnp.sum(
                model.embed({"embed": p}, x) * jax.lax.stop_gradient(e_T @ state.feedback["embed"])
            )
        )(params["embed"])
        return state, StepOutput({"embed": embed, "blocks": blocks, "head": head_grads}, value)

    return Rule("dfa", init, step)


def frozen_blocks(rule: Rule) -> Rule:
    """Diagnostic (d)'s baseline: the same rule with the deep blocks frozen at their random init
    (zero block gradients); the embedding and the head train (the terminal LN has no
    parameters here)."""

    def step(params, state, x, labels):
        state, out = rule.step(params, state, x, labels)
        grads = {**out.grads, "blocks": jax.tree.map(jnp.zeros_like, out.grads["blocks"])}
        return state, out._replace(grads=grads)

    return Rule(f"{rule.name}, frozen blocks", rule.init, step)


def alignment(grads: dict, bp_grads: dict) -> dict:
    """Γ per layer: `metrics.cosine` of a method's gradient with BP's, for the embedding, each
    block and the head (never aggregated here; `metrics.aggregate_cosine` names a strategy)."""
    from fa_audit import metrics

    out = {"embed": metrics.cosine(grads["embed"], bp_grads["embed"])}
    for l, (g, ref) in enumerate(zip(grads["blocks"], bp_grads["blocks"], strict=True)):
        out[f"block{l}"] = metrics.cosine(g, ref)
    out["head"] = metrics.cosine(grads["head"], bp_grads["head"])
    return out


RULES = {"bp": bp, "fa": fa, "dfa": dfa}


def get(name: str, model, **options) -> Rule:
    if name not in RULES:
        raise ValueError(f"unknown credit method {name!r}; known: {sorted(RULES)}")
    if name == "bp" and options:
        raise ValueError(f"bp takes no options, got {sorted(options)}")
    return RULES[name](model, **options)
