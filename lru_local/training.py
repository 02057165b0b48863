"""Trainers of the depth study: a learning rule of `lru_local.rules` plus an optimizer.

Every trainer is a pair of pure functions over the pytree `TrainState`:

    state = trainer.init(key, params)                 # optimizer state zeroed, noise key kept
    state, metrics = trainer.step(state, tokens, lr)  # tokens int [B, T+1]: one batch

`lr` is an array (not a Python float), so a learning-rate grid and a seed sweep are one `jax.vmap`.
The optimizer comes from `rtrl.optimizers` by name (default Adam: β1=0.9, β2=0.999, ε=1e-8) and
updates all parameters; the embedding E is frozen (its gradient is zero in every rule, so Adam
leaves it unchanged).

    bptt, local, tbptt(w)   one update per batch from the rule's gradient.
    online(k)               the batch read as B streams: the online rule restarted at the batch's
                            first byte (states and traces zero, noise key fold_in(key, step)),
                            then an update every k tokens, states and traces carried across
                            updates; k = T gives `local` exactly.

`metrics` holds "loss" (the batch's next-byte CE in nats, under the parameters the trainer saw),
"grad_norm" (global L2 norm of the update's gradient; online: of the last update) and, for local
and online, "local_losses" [L].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lru_local import model, rules
from lru_local.config import Config
from lru_local.rules import zero_states
from rtrl import optimizers

TRAINERS = rules.NAMES


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    key: jax.Array  # raw uint32 [2] key of the denoising noise (online: per-batch restarts)
    step: jax.Array  # int32 scalar: batches consumed
    rule_state: object  # the rule's state, carried across batches (online: unused, ())


class Trainer(NamedTuple):
    name: str
    init: Callable  # (key, params) -> TrainState
    step: Callable  # (state, tokens [B, T+1], lr) -> (state, metrics)


def make_trainer(
    name: str,
    cfg: Config,
    *,
    seq_len: int,
    window: int | None = None,
    every: int | None = None,
    chunk: int = 32,
    optimizer: str = "adam",
) -> Trainer:
    """The trainer `name` in TRAINERS for batches of seq_len + 1 bytes.

    window: tbptt's w; every: online's k; chunk: steps per scan iteration of the trace engine
    (any value gives the same gradients); optimizer: a name in `rtrl.optimizers.NAMES`.
    """
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; choose one of {list(TRAINERS)}")
    tx = optimizers.get(optimizer)
    options = {"local": {"chunk": chunk}, "tbptt": {"window": window, "seq_len": seq_len}}
    if name == "online":
        rules.check_divides("online update interval", every, seq_len)
    batch_rule = None if name == "online" else rules.get(name, cfg, **options.get(name, {}))

    def init(key, params):
        rule_state = () if batch_rule is None else batch_rule.init(key, params)
        return TrainState(params, tx.init(params), key, jnp.int32(0), rule_state)

    def update(params, opt_state, grads, lr):
        opt_state = optimizers.with_learning_rate(opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def batch_step(state, tokens, lr):
        rule_state, out = batch_rule.step(state.params, state.rule_state, tokens)
        params, opt_state = update(state.params, state.opt_state, out.grads, lr)
        metrics = {"loss": out.loss, "grad_norm": optax.tree.norm(out.grads)}
        if name == "local":
            metrics["local_losses"] = out.layer_losses
        return TrainState(params, opt_state, state.key, state.step + 1, rule_state), metrics

    def online_step(state, tokens, lr):
        rule = rules.online(cfg, every, tokens.shape[0])
        windows = jnp.stack(
            [tokens[:, j * every : (j + 1) * every + 1] for j in range(seq_len // every)]
        )

        def body(carry, window_tokens):
            params, opt_state, rule_state = carry
            rule_state, out = rule.step(params, rule_state, window_tokens)
            params, opt_state = update(params, opt_state, out.grads, lr)
            return (params, opt_state, rule_state), (out.layer_losses, optax.tree.norm(out.grads))

        start = rule.init(jax.random.fold_in(state.key, state.step), state.params)
        (params, opt_state, _), (losses, norms) = jax.lax.scan(
            body, (state.params, state.opt_state, start), windows
        )
        metrics = {
            "loss": jnp.mean(losses[:, -1]),
            "grad_norm": norms[-1],
            "local_losses": jnp.mean(losses, axis=0),
        }
        return TrainState(params, opt_state, state.key, state.step + 1, ()), metrics

    return Trainer(name, init, online_step if name == "online" else batch_step)


def stream_eval(
    params: dict, streams: jax.Array, window: int, activation: str = "none"
) -> jax.Array:
    """Summed next-byte CE (nats) of streams int [S, M+1] read in order, state carried.

    Each of the S rows is a contiguous stretch of text; it is read in M/w consecutive windows of
    w bytes with every layer's state carried from one window to the next (the model sees the
    whole row as one sequence). Returns the summed -log p(x_{t+1} | x_≤t) of each window
    [M/w] (sum them in float64 on the host: a float32 running total would drift).
    """
    n_streams, length = streams.shape
    n_windows = (length - 1) // window

    def body(states, j):
        x = jax.lax.dynamic_slice_in_dim(streams, j * window, window + 1, axis=1)
        ys, _, states = model.stack_forward(
            params, x[:, :-1], local=False, s_init=states, activation=activation
        )
        return states, jnp.sum(model.task_loss(params["decoder"], ys[-1], x[:, 1:]))

    _, sums = jax.lax.scan(body, zero_states(params, n_streams), jnp.arange(n_windows))
    return sums
