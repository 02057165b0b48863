"""Trainers of the depth study: a learning rule of `lru_local.rules` plus an optimizer.

Every trainer is a pair of pure functions over the pytree `TrainState`:

    state = trainer.init(key, params)                 # optimizer state zeroed, noise key kept
    state, metrics = trainer.step(state, tokens, lr)  # tokens int [B, T+1]: one batch

`lr` is an array (not a Python float), so a learning-rate grid and a seed sweep are one `jax.vmap`.
The optimizer comes from `rtrl.optimizers` by name (default Adam: β1=0.9, β2=0.999, ε=1e-8) and
updates all parameters; a frozen embedding E gets a zero gradient in every rule, so Adam leaves it
unchanged. The same update protocol serves every trainer (defaults: today's constant-lr Adam):

    g ← g · min(1, c / ||g||)                    clip_norm = c (global L2 norm; None: no clip)
    η_u = lr · f(u / U)                           schedule: "constant" (f = 1) or
                                                  "warmup_cosine": linear warmup over the first
                                                  W = round(warmup_fraction · U) updates,
                                                  f = (u + 1) / W, then cosine decay to 0,
                                                  f = (1 + cos(π (u − W) / (U − W))) / 2
    θ ← θ + optimizer(g; η_u) − η_u · wd · θ      weight_decay = wd (decoupled, AdamW-style), not
                                                  on nu_log, theta, gamma_log nor a frozen E

u counts updates from 0 (one per batch; online: T/k per batch, u = batch · T/k + j) and
U = total_steps · (updates per batch).

    bptt, local, tbptt(w)   one update per batch from the rule's gradient.
    online(k)               the batch read as B streams: the online rule restarted at the batch's
                            first byte (states and traces zero, noise key fold_in(key, step)),
                            then an update every k tokens, states and traces carried across
                            updates; k = T gives `local` exactly.

`metrics` holds "loss" (the batch's next-byte CE in nats, under the parameters the trainer saw),
"grad_norm" (global L2 norm of the update's gradient before clipping; online: of the last update)
and, for local and online, "local_losses" [L].
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


def _constant(progress, warmup_fraction, total_updates):
    del warmup_fraction, total_updates
    return jnp.ones_like(progress)


def _warmup_cosine(update_index, warmup_fraction, total_updates):
    warmup = round(warmup_fraction * total_updates)
    u = update_index
    warm = (u + 1) / max(warmup, 1)
    decay_phase = jnp.clip((u - warmup) / max(total_updates - warmup, 1), 0.0, 1.0)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * decay_phase))
    return jnp.where(u < warmup, warm, cosine)


# f(u) of the learning-rate schedule: (update index [] float, warmup_fraction, U) -> factor [].
SCHEDULES = {"constant": _constant, "warmup_cosine": _warmup_cosine}
NO_DECAY = ("nu_log", "theta", "gamma_log")  # leaves weight decay never touches


def decay_mask(params: dict, cfg: Config) -> dict:
    """True for the leaves weight decay applies to: all but NO_DECAY (and a frozen E)."""

    def decays(path, _):
        name = getattr(path[-1], "key", None)
        if name == "embed" and cfg.embedding == "frozen":
            return False
        return name not in NO_DECAY

    return jax.tree_util.tree_map_with_path(decays, params)


def _check_protocol(schedule, total_steps, warmup_fraction, clip_norm, weight_decay):
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if schedule != "constant" and (
        not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1
    ):
        raise ValueError(
            f"schedule={schedule!r} needs total_steps=<number of batches>, a positive int; "
            f"got {total_steps!r}"
        )
    if not 0.0 <= warmup_fraction <= 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1], got {warmup_fraction!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be None (no clipping) or > 0, got {clip_norm!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def make_trainer(
    name: str,
    cfg: Config,
    *,
    seq_len: int,
    window: int | None = None,
    every: int | None = None,
    chunk: int = 32,
    optimizer: str = "adam",
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_fraction: float = 0.1,
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
) -> Trainer:
    """The trainer `name` in TRAINERS for batches of seq_len + 1 bytes.

    window: tbptt's w; every: online's k; chunk: steps per scan iteration of the trace engine
    (any value gives the same gradients); optimizer: a name in `rtrl.optimizers.NAMES`.
    schedule (in SCHEDULES), total_steps (batches; needed by a non-constant schedule),
    warmup_fraction, clip_norm, weight_decay: the update protocol of the module docstring; the
    defaults are constant-lr `optimizer` with no clipping and no decay. The `lr` passed to
    `step` is the schedule's peak.
    """
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; choose one of {list(TRAINERS)}")
    _check_protocol(schedule, total_steps, warmup_fraction, clip_norm, weight_decay)
    tx = optimizers.get(optimizer)
    options = {"local": {"chunk": chunk}, "tbptt": {"window": window, "seq_len": seq_len}}
    if name == "online":
        rules.check_divides("online update interval", every, seq_len)
    batch_rule = None if name == "online" else rules.get(name, cfg, **options.get(name, {}))
    updates_per_batch = seq_len // every if name == "online" else 1
    total_updates = (total_steps or 1) * updates_per_batch
    lr_factor = SCHEDULES[schedule]

    def init(key, params):
        rule_state = () if batch_rule is None else batch_rule.init(key, params)
        return TrainState(params, tx.init(params), key, jnp.int32(0), rule_state)

    def update(params, opt_state, grads, lr, update_index):
        if clip_norm is not None:
            norm = optax.tree.norm(grads)
            scale = clip_norm / jnp.maximum(norm, clip_norm)
            grads = jax.tree_util.tree_map(lambda g: g * scale.astype(g.dtype), grads)
        if schedule != "constant":
            progress = jnp.asarray(update_index, jnp.asarray(lr).dtype)
            lr = lr * lr_factor(progress, warmup_fraction, total_updates)
        opt_state = optimizers.with_learning_rate(opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, params)
        if weight_decay:
            rate = optimizers.learning_rate(opt_state) * weight_decay
            updates = jax.tree_util.tree_map(
                lambda d, up, p: up - rate.astype(p.dtype) * p if d else up,
                decay_mask(params, cfg),
                updates,
                params,
            )
        return optax.apply_updates(params, updates), opt_state

    def batch_step(state, tokens, lr):
        rule_state, out = batch_rule.step(state.params, state.rule_state, tokens)
        params, opt_state = update(state.params, state.opt_state, out.grads, lr, state.step)
        metrics = {"loss": out.loss, "grad_norm": optax.tree.norm(out.grads)}
        if name == "local":
            metrics["local_losses"] = out.layer_losses
        return TrainState(params, opt_state, state.key, state.step + 1, rule_state), metrics

    def online_step(state, tokens, lr):
        rule = rules.online(cfg, every, tokens.shape[0])
        windows = jnp.stack(
            [tokens[:, j * every : (j + 1) * every + 1] for j in range(seq_len // every)]
        )

        def body(carry, inputs):
            params, opt_state, rule_state = carry
            window_tokens, j = inputs
            rule_state, out = rule.step(params, rule_state, window_tokens)
            update_index = state.step * updates_per_batch + j
            params, opt_state = update(params, opt_state, out.grads, lr, update_index)
            return (params, opt_state, rule_state), (out.layer_losses, optax.tree.norm(out.grads))

        start = rule.init(jax.random.fold_in(state.key, state.step), state.params)
        (params, opt_state, _), (losses, norms) = jax.lax.scan(
            body,
            (state.params, state.opt_state, start),
            (windows, jnp.arange(updates_per_batch)),
        )
        metrics = {
            "loss": jnp.mean(losses[:, -1]),
            "grad_norm": norms[-1],
            "local_losses": jnp.mean(losses, axis=0),
        }
        return TrainState(params, opt_state, state.key, state.step + 1, ()), metrics

    return Trainer(name, init, online_step if name == "online" else batch_step)


def stream_eval(params: dict, streams: jax.Array, window: int, activation="none") -> jax.Array:
    """Summed next-byte CE (nats) of streams int [S, M+1] read in order, state carried.

    activation: the model's architecture, a Config (needed for the block options norm, block,
    head_input, gamma) or Config.activation alone (the post's block).

    Each of the S rows is a contiguous stretch of text; it is read in M/w consecutive windows of
    w bytes with every layer's state carried from one window to the next (the model sees the
    whole row as one sequence). Returns the summed -log p(x_{t+1} | x_≤t) of each window
    [M/w] (sum them in float64 on the host: a float32 running total would drift).
    """
    n_streams, length = streams.shape
    n_windows = (length - 1) // window

    def body(states, j):
        x = jax.lax.dynamic_slice_in_dim(streams, j * window, window + 1, axis=1)
        ys, us, states = model.stack_forward(
            params, x[:, :-1], local=False, s_init=states, arch=activation
        )
        features = model.top_features(ys, us, activation)
        return states, jnp.sum(model.task_loss(params["decoder"], features, x[:, 1:]))

    _, sums = jax.lax.scan(body, zero_states(params, n_streams), jnp.arange(n_windows))
    return sums
