"""Local + online training of deep LRU stacks with exact forward-mode eligibility traces.

Public API (see each function's docstring for shapes and equations):
    Config, init, apply, bptt_grads, local_grads, local_grads_autodiff, local_grads_jvp,
    online_init, online_step, bits_per_byte, describe_losses; `rules` (the gradient engines as
    learning rules: bptt, local, tbptt, online) and `training` (a rule plus an optimizer).
"""

import jax

from lru_local import model, rules, validation
from lru_local.bptt import bits_per_byte, bptt_grads, describe_losses
from lru_local.config import Config
from lru_local.eligibility import LayerTrace, local_grads, online_init, online_step
from lru_local.model import init
from lru_local.reference import local_grads_autodiff, local_grads_jvp


def apply(params: dict, tokens: jax.Array, cfg: Config) -> jax.Array:
    """Next-byte logits: tokens int [B, T] -> logits [B, T-1, vocab] predicting tokens[:, 1:]."""
    validation.check_sequence_call(params, tokens, cfg)
    return _apply_jit(params, tokens, cfg)


_apply_jit = jax.jit(model.logits, static_argnums=2)

__all__ = [
    "Config",
    "LayerTrace",
    "apply",
    "bits_per_byte",
    "bptt_grads",
    "describe_losses",
    "init",
    "local_grads",
    "local_grads_autodiff",
    "local_grads_jvp",
    "online_init",
    "online_step",
    "rules",
]
