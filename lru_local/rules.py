"""The LRU stack's gradient engines as learning rules of the suite's one contract.

    state = rule.init(key, params)
    state, out = rule.step(params, state, tokens)      # out.grads: like params; out.loss: []

No optimizer is inside a rule (see `rtrl.optimizers`; `lru_local.training` composes the two).
tokens int [B, T+1] hold B rows of T predictions (`online`: T = k, one update interval).

    bptt          ∇ of the mean next-byte CE through depth and time (state: ()).
    local         the exact local gradients Σ_ℓ ∇_{θ^ℓ} mean_t L^ℓ_t by forward traces (no backward
                  pass across a layer or a timestep); state: the denoising-noise key and the number
                  of batches seen, batch i drawing ε_t from fold_in(fold_in(key, i), t).
    tbptt(w)      (1/n) Σ_j ∇ CE_j over the n = T/w consecutive windows of w steps, the state
                  carried across window edges as a constant (w = T: bptt; state: ()).
    online(k)     the local rule on B unbounded streams, k tokens per step: the layer states and
                  traces are carried from one step to the next (across parameter updates they mix
                  parameter versions, the usual online approximation); ε at absolute position t
                  from fold_in(key, t). `init` starts the streams at t = 0 with zero states.

`out.loss` is the batch's next-byte CE (nats) under `params`; `out.layer_losses` [L] every layer's
own loss (local, online; [CE] for the end-to-end rules).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lru_local import eligibility, model
from lru_local.bptt import task_loss_bptt
from lru_local.config import Config

NAMES = ("bptt", "local", "tbptt", "online")


class RuleOutput(NamedTuple):
    grads: dict  # like params (embed: zeros if E is frozen)
    loss: jax.Array  # [] next-byte CE in nats
    layer_losses: jax.Array  # [L] (local, online) or [1] (bptt, tbptt)


class Rule(NamedTuple):
    name: str
    init: Callable  # (key, params) -> state
    step: Callable  # (params, state, tokens [B, T+1]) -> (state, RuleOutput)


class LocalState(NamedTuple):
    key: jax.Array  # raw uint32 [2] PRNG key of the denoising noise
    step: jax.Array  # int32 [] batches consumed


class OnlineState(NamedTuple):
    key: jax.Array  # raw uint32 [2] PRNG key; ε at position t from fold_in(key, t)
    t: jax.Array  # int32 [] tokens consumed per stream
    layers: list  # per layer a eligibility.LayerTrace with B rows


def window_task_loss(params: dict, tokens: jax.Array, s_init: list, arch="none"):
    """Mean CE of tokens [B, w+1] with the states before it s_init (stop-gradded): (CE, s_last).

    arch: a Config or Config.activation."""
    s_init = jax.lax.stop_gradient(s_init)
    ys, us, s_last = model.stack_forward(
        params, tokens[:, :-1], local=False, s_init=s_init, arch=arch
    )
    features = model.top_features(ys, us, arch)
    return jnp.mean(model.task_loss(params["decoder"], features, tokens[:, 1:])), s_last


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
        (loss, states), grads = grad_fn(params, x, states, cfg)
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
        return (states, loss_sum + loss, grad_sum), None

    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    init = (zero_states(params, batch), jnp.zeros((), dtype), zero_grads)
    (_, loss, grads), _ = jax.lax.scan(body, init, jnp.arange(n_windows))
    scale = 1.0 / n_windows
    return loss * scale, jax.tree_util.tree_map(lambda g: g * scale, grads)


def check_divides(name: str, value, length: int) -> None:
    if not isinstance(value, int) or value < 1 or length % value:
        raise ValueError(
            f"{name}={value!r} must be a positive int dividing the T={length} predictions of "
            f"each batch; pick a divisor of seq_len"
        )


def bptt(cfg: Config) -> Rule:
    def step(params, state, tokens):
        loss, grads = jax.value_and_grad(task_loss_bptt)(params, tokens, cfg)
        return state, RuleOutput(grads, loss, loss[None])

    return Rule("bptt", lambda key, params: (), step)


def local(cfg: Config, chunk: int = 32) -> Rule:
    """chunk: steps per scan iteration of the trace engine (any value gives the same gradients)."""

    def init(key, params):
        return LocalState(jnp.asarray(key), jnp.int32(0))

    def step(params, state, tokens):
        key = jax.random.fold_in(state.key, state.step)
        losses, grads = eligibility.scan_local_grads(params, tokens, key, cfg, chunk=chunk)
        return LocalState(state.key, state.step + 1), RuleOutput(grads, losses[-1], losses)

    return Rule("local", init, step)


def tbptt(cfg: Config, window: int, seq_len: int) -> Rule:
    check_divides("tbptt window", window, seq_len)

    def step(params, state, tokens):
        loss, grads = tbptt_grads(params, tokens, cfg, window)
        return state, RuleOutput(grads, loss, loss[None])

    return Rule("tbptt", lambda key, params: (), step)


def online(cfg: Config, every: int, batch: int) -> Rule:
    """Steps consume tokens [batch, every+1]: `every` predictions per stream, gradient weight
    1/every per prediction (the mean over the step's window)."""
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"online update interval every={every!r} must be a positive int")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"online needs batch=<number of streams B>, a positive int; got {batch!r}")

    def init(key, params):
        layers = eligibility.init_layer_states(batch, cfg, params["embed"].dtype)
        return OnlineState(jnp.asarray(key), jnp.int32(0), layers)

    def step(params, state, tokens):
        dtype = params["embed"].dtype
        t = state.t + jnp.arange(every)
        noise = eligibility.denoise_noise_at(state.key, t, batch, cfg, dtype)
        weights = jnp.full((every,), 1.0 / every, dtype)
        layers, losses, grads = eligibility.chunk_step(
            params,
            state.layers,
            tokens[:, :-1].T,
            tokens[:, 1:].T,
            noise,
            weights,
            arch=cfg,
        )
        out = RuleOutput(grads, losses[-1], losses)
        return OnlineState(state.key, state.t + every, layers), out

    return Rule("online", init, step)


_REGISTRY = {"bptt": bptt, "local": local, "tbptt": tbptt, "online": online}


def get(name: str, cfg: Config, **options) -> Rule:
    """The rule `name` in NAMES: get("bptt", cfg), get("local", cfg, chunk=32),
    get("tbptt", cfg, window=w, seq_len=T), get("online", cfg, every=k, batch=B)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown rule {name!r}; choose one of {list(NAMES)}")
    factory = _REGISTRY[name]
    accepted = [p for p in inspect.signature(factory).parameters if p != "cfg"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"rule {name} does not take option(s) {unknown}; it accepts {accepted}")
    return factory(cfg, **options)
