"""End-to-end training signal: reverse mode through the whole stack and the whole sequence."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from lru_local import model, validation
from lru_local.config import Config


def task_loss_bptt(params: dict, tokens: jax.Array, arch: Config | str = "none") -> jax.Array:
    """Mean next-byte CE in nats of the full stack (gradients flow through depth and time).

    arch: a Config or Config.activation (the post's block)."""
    ys, us, _ = model.stack_forward(params, tokens[:, :-1], local=False, arch=arch)
    features = model.top_features(ys, us, arch)
    return jnp.mean(model.task_loss(params["decoder"], features, tokens[:, 1:]))


def bptt_grads(params: dict, tokens: jax.Array, cfg: Config):
    """(loss, grads) = jax.value_and_grad of the end-to-end task CE (parallel associative scan).

    tokens int [B, T]; loss is the mean CE over B·(T-1) predictions in nats; grads has the
    structure of params (the hidden heads g^ℓ get zeros, they are unused; embed gets zeros if
    cfg.embedding is "frozen", its real gradient if "learned").
    """
    validation.check_sequence_call(params, tokens, cfg)
    return _bptt_jit(params, tokens, cfg)


@jax.jit(static_argnames="cfg")
def _bptt_jit(params, tokens, cfg):
    return jax.value_and_grad(task_loss_bptt)(params, tokens, cfg)


def bits_per_byte(ce_nats):
    """Bits per byte of a mean cross-entropy in nats: CE / ln 2."""
    return ce_nats / math.log(2.0)


def describe_losses(losses) -> dict:
    """Per-layer local losses [L] -> named floats, incl. the task head's bits per byte.

    Hidden layers report their denoising MSE, the last layer its CE (nats) and bpb; "total" is
    Σ_ℓ L^ℓ, the quantity whose gradient `local_grads` returns.
    """
    values = [float(v) for v in losses]
    out = {f"layer{ell + 1}_denoise_mse": v for ell, v in enumerate(values[:-1])}
    out["task_ce_nats"] = values[-1]
    out["task_bpb"] = bits_per_byte(values[-1])
    out["total"] = sum(values)
    return out
