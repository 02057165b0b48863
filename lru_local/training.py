"""Trainers of the depth study (BPTT, local traces, truncated BPTT, online) and streaming eval.

Every trainer is a pair of pure functions over the pytree `TrainState`:

    state = trainer.init(key, params)                 # Adam moments zeroed, noise key kept
    state, metrics = trainer.step(state, tokens, lr)  # tokens int [B, T+1]: one batch

`lr` is an array (not a Python float), so a learning-rate grid and a seed sweep are one `jax.vmap`.
Adam (β1=0.9, β2=0.999, ε=1e-8, optax) updates all parameters; the embedding E is frozen
(its gradient is zero in every trainer, so Adam leaves it unchanged).

    bptt          one update per batch from ∇ of the mean next-byte CE through depth and time.
    local         one update per batch from the exact local gradients (forward traces):
                  Σ_ℓ ∇_{θ^ℓ} mean_t L^ℓ_t, no backward pass across a layer or a timestep.
    tbptt(w)      one update per batch from Σ_windows ∇ CE over consecutive windows of w steps,
                  the state carried across window edges and the gradient cut there (w = T: bptt).
    online(k)     the local rule on the batch read as B streams: an update every k tokens, the
                  states and traces carried across updates (they then mix parameter versions, the
                  usual online approximation); k = T gives `local` exactly.

`metrics` holds "loss" (the batch's next-byte CE in nats, under the parameters the trainer saw)
and "grad_norm" (global L2 norm of the update's gradient; online: of the last update).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from lru_local import model, traces
from lru_local.bptt import task_loss_bptt
from lru_local.config import Config

TRAINERS = ("bptt", "local", "tbptt", "online")


class TrainState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    key: jax.Array  # raw uint32 [2] key of the denoising noise; step i uses fold_in(key, i)
    step: jax.Array  # int32 scalar: batches consumed


class Trainer(NamedTuple):
    name: str
    init: Callable  # (key, params) -> TrainState
    step: Callable  # (state, tokens [B, T+1], lr) -> (state, metrics)


def _adam(lr) -> optax.GradientTransformation:
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


def _init(key: jax.Array, params: dict) -> TrainState:
    return TrainState(params, _adam(1.0).init(params), key, jnp.int32(0))


def _update(params, opt_state, grads, lr):
    updates, opt_state = _adam(lr).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _finish(state: TrainState, grads, lr, loss, **extra):
    params, opt_state = _update(state.params, state.opt_state, grads, lr)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **extra}
    return TrainState(params, opt_state, state.key, state.step + 1), metrics


def _step_key(state: TrainState) -> jax.Array:
    return jax.random.fold_in(state.key, state.step)


def window_task_loss(params: dict, tokens: jax.Array, s_init: list, activation: str = "none"):
    """Mean CE of tokens [B, w+1] with the states before it s_init (stop-gradded): (CE, s_last)."""
    s_init = jax.lax.stop_gradient(s_init)
    ys, _, s_last = model.stack_forward(
        params, tokens[:, :-1], local=False, s_init=s_init, activation=activation
    )
    return jnp.mean(model.task_loss(params["decoder"], ys[-1], tokens[:, 1:])), s_last


def zero_states(params: dict, batch: int) -> list:
    """Per-layer complex zero states [B, N] (the state before the first byte), sized from params."""
    ctype = jnp.result_type(params["embed"].dtype, jnp.complex64)
    return [jnp.zeros((batch, layer["nu_log"].shape[0]), ctype) for layer in params["layers"]]


def tbptt_grads(params: dict, tokens: jax.Array, cfg: Config, window: int):
    """(mean CE, grads) of truncated BPTT: tokens [B, T+1] cut into T/w windows of w steps.

    Window j's loss is the mean CE of its w predictions with the state s_{jw-1} carried from
    window j-1 as a constant; grads = (1/n) Σ_j ∇ CE_j, so w = T is exactly `bptt_grads`. A
    `lax.scan` over windows keeps one window's activations alive at a time (memory ∝ w).
    """
    batch, length = tokens.shape
    n_windows = (length - 1) // window
    dtype = params["embed"].dtype
    grad_fn = jax.value_and_grad(window_task_loss, has_aux=True)

    def body(carry, j):
        states, loss_sum, grad_sum = carry
        x = jax.lax.dynamic_slice_in_dim(tokens, j * window, window + 1, axis=1)
        (loss, states), grads = grad_fn(params, x, states, cfg.activation)
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
        return (states, loss_sum + loss, grad_sum), None

    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    init = (zero_states(params, batch), jnp.zeros((), dtype), zero_grads)
    (_, loss, grads), _ = jax.lax.scan(body, init, jnp.arange(n_windows))
    scale = 1.0 / n_windows
    return loss * scale, jax.tree_util.tree_map(lambda g: g * scale, grads)


def _check_divides(name: str, value: int, length: int) -> None:
    if not isinstance(value, int) or value < 1 or length % value:
        raise ValueError(
            f"{name}={value!r} must be a positive int dividing the T={length} predictions of "
            f"each batch; pick a divisor of seq_len"
        )


def make_trainer(
    name: str,
    cfg: Config,
    *,
    seq_len: int,
    window: int | None = None,
    every: int | None = None,
    chunk: int = 32,
) -> Trainer:
    """The trainer `name` in TRAINERS for batches of seq_len + 1 bytes.

    window: tbptt's w; every: online's k; chunk: steps per scan iteration of the trace engine
    (any value gives the same gradients).
    """
    if name not in TRAINERS:
        raise ValueError(f"unknown trainer {name!r}; choose one of {list(TRAINERS)}")

    if name == "bptt":

        def step(state, tokens, lr):
            loss, grads = jax.value_and_grad(task_loss_bptt)(state.params, tokens, cfg.activation)
            return _finish(state, grads, lr, loss)

    elif name == "local":

        def step(state, tokens, lr):
            losses, grads = traces.scan_local_grads(
                state.params, tokens, _step_key(state), cfg, chunk=chunk
            )
            return _finish(state, grads, lr, losses[-1], local_losses=losses)

    elif name == "tbptt":
        _check_divides("tbptt window", window, seq_len)

        def step(state, tokens, lr):
            loss, grads = tbptt_grads(state.params, tokens, cfg, window)
            return _finish(state, grads, lr, loss)

    else:
        _check_divides("online update interval", every, seq_len)

        def step(state, tokens, lr):
            batch = tokens.shape[0]
            dtype = state.params["embed"].dtype
            key = _step_key(state)
            x = tokens[:, :-1].T.reshape(seq_len // every, every, batch)
            x_next = tokens[:, 1:].T.reshape(seq_len // every, every, batch)
            weights = jnp.full((every,), 1.0 / every, dtype)

            def body(carry, inputs):
                params, opt_state, layer_states = carry
                j, x_j, x_next_j = inputs
                t = j * every + jnp.arange(every)
                noise = traces.denoise_noise_at(key, t, batch, cfg, dtype)
                layer_states, losses, grads = traces.chunk_step(
                    params, layer_states, x_j, x_next_j, noise, weights, activation=cfg.activation
                )
                params, opt_state = _update(params, opt_state, grads, lr)
                return (params, opt_state, layer_states), (losses, optax.tree.norm(grads))

            zero = [traces.TRACE_ENGINE.init(batch, cfg, dtype) for _ in range(cfg.depth)]
            (params, opt_state, _), (losses, norms) = jax.lax.scan(
                body,
                (state.params, state.opt_state, zero),
                (jnp.arange(seq_len // every), x, x_next),
            )
            metrics = {
                "loss": jnp.mean(losses[:, -1]),
                "grad_norm": norms[-1],
                "local_losses": jnp.mean(losses, axis=0),
            }
            return TrainState(params, opt_state, state.key, state.step + 1), metrics

    return Trainer(name, _init, step)


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
