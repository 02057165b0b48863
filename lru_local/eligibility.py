"""Exact forward-mode eligibility traces for the local (B = L) objective: the trace engine.

Layer ℓ is the last layer of its own one-layer network (its input u^ℓ is stop-gradded, its loss
L^ℓ sits on its own output), so its only recurrent path from parameters to loss is its own
diagonal state, and the sensitivities close per unit i (Zucchet et al.):

    e^λ_{i,t} = λ_i e^λ_{i,t-1} + s_{i,t-1}             e^λ_t = ∂s_t/∂λ        complex [N]
    e^B_{i,t} = λ_i e^B_{i,t-1} + u_t                   e^B_t[i, :] = ∂s_{t,i}/∂B_i:   [N, H]

With the local error at the state δ_t = ∂L_t/∂Re(s_t) + i ∂L_t/∂Im(s_t) (one vector-Jacobian
product through the head and C, spatially local, within the timestep), the real gradients are
dL_t = Re(conj(δ_t) ds_t), hence

    ∂L_t/∂nu_log_i = Re(conj(δ_i) e^λ_i λ_i) · (-exp(nu_log_i))      (dλ/dnu_log = -λ exp(nu_log))
    ∂L_t/∂theta_i  = -Im(conj(δ_i) e^λ_i λ_i)                        (dλ/dtheta  = i λ)
    ∂L_t/∂B_re_ij  =  Re(conj(δ_i) e^B_i[j])                          (ds/dB_re = e^B)
    ∂L_t/∂B_im_ij  = -Im(conj(δ_i) e^B_i[j])                          (ds/dB_im = i e^B)

C, D and the heads sit downstream of the state, so their gradients are instantaneous. A forward
`lax.scan` over the sequence carries (s, e^λ, e^B) per layer and batch row: memory
O(params × batch), flat in T. It advances `chunk` steps per iteration (see `chunk_step`), which
batches the instantaneous readout over those steps; the traces still advance one step at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lru_local import model, validation
from lru_local.config import Config


class LayerTrace(NamedTuple):
    """Online state of one layer: the LRU state and its forward sensitivities."""

    s: jax.Array  # s_t, complex [B, N]
    e_lam: jax.Array  # e^λ_t = ∂s_t/∂λ, complex [B, N]
    # e^B_t[i, b, j] = ∂s_{t,i}/∂B_ij for batch row b, complex [N, B, H]. Unit-major, so the
    # per-step contraction Σ_b conj(δ_{b,i}) e^B[i, b, :] is a batched matvec over units
    # (measured 3× faster on CPU than the batch-major [B, N, H] layout).
    e_B: jax.Array


def layer_trace_init(batch: int, d_state: int, d_model: int, dtype=jnp.float32) -> LayerTrace:
    """Zero state and traces (s_{-1} = 0) for `batch` rows."""
    cdtype = jnp.result_type(dtype, jnp.complex64)
    return LayerTrace(
        s=jnp.zeros((batch, d_state), cdtype),
        e_lam=jnp.zeros((batch, d_state), cdtype),
        e_B=jnp.zeros((d_state, batch, d_model), cdtype),
    )


def layer_trace_update(
    layer: dict, trace: LayerTrace, u: jax.Array, s: jax.Array | None = None
) -> LayerTrace:
    """Advances s, e^λ, e^B by one step on input u_t [B, H] (the three recursions above).

    s: the new state s_t [B, N] if the caller already has it (computed as λ s_{t-1} + B u_t).
    """
    lam = model.eigenvalues(layer)
    return LayerTrace(
        s=lam * trace.s + model.input_projection(layer, u) if s is None else s,
        e_lam=lam * trace.e_lam + trace.s,
        e_B=lam[:, None, None] * trace.e_B + u[None].astype(trace.e_B.dtype),
    )


def layer_trace_grads(layer: dict, trace: LayerTrace, delta: jax.Array) -> dict:
    """Contracts the local error with the traces, summed over the batch.

    Args:
      layer: the layer's parameters (for λ and nu_log).
      trace: traces at step t (after `layer_trace_update`).
      delta: δ_t = ∂L_t/∂Re(s_t) + i ∂L_t/∂Im(s_t), complex [B, N].
    Returns:
      {"nu_log": [N], "theta": [N], "B_re": [N, H], "B_im": [N, H]}, real.
    """
    lam = model.eigenvalues(layer)
    conj_delta = jnp.conj(delta)
    w = jnp.sum(conj_delta * trace.e_lam, axis=0) * lam
    z = jnp.einsum("bn,nbh->nh", conj_delta, trace.e_B)
    return {
        "nu_log": -jnp.exp(layer["nu_log"]) * w.real,
        "theta": -w.imag,
        "B_re": z.real,
        "B_im": -z.imag,
    }


def readout_loss(
    readout: dict, s_re, s_im, u, target, weights, *, is_task: bool, activation: str = "none"
):
    """Weighted sum over steps of layer ℓ's batch-mean instantaneous loss, given its states.

    readout: {"C_re", "C_im", "D", "head"}; s_re, s_im [C, B, N] (C steps); u [C, B, H];
    target: the noised next embedding x̃_{t+1} [C, B, H] for hidden layers, or the next bytes
    x_{t+1} [C, B] for the task head; weights [C]. Returns (Σ_c w_c mean_b L_c, y [C, B, H]).
    The loss of step c depends on s_c only, so its gradient w.r.t. s is the per-step local error
    δ_c (times w_c): C instantaneous errors batched, no gradient crosses a timestep.
    """
    y = model.layer_output(readout, s_re + 1j * s_im, u, activation)
    if is_task:
        per_row = model.task_loss(readout["head"], y, target)
    else:
        per_row = model.denoise_loss(readout["head"], y, target)
    return jnp.sum(weights * jnp.mean(per_row, axis=-1)), y


readout_value_and_grad = jax.value_and_grad(readout_loss, argnums=(0, 1, 2), has_aux=True)


def denoise_noise(key: jax.Array, batch: int, cfg: Config, dtype) -> jax.Array:
    """σ·ε for one step: [L-1, B, H]; local_grads uses key_t = fold_in(key, t) at step t."""
    return cfg.noise_std * jax.random.normal(key, (cfg.depth - 1, batch, cfg.d_model), dtype)


def denoise_noise_at(key: jax.Array, t: jax.Array, batch: int, cfg: Config, dtype) -> jax.Array:
    """σ·ε for steps t [C] (int), each from fold_in(key, t): [C, L-1, B, H]."""
    return jax.vmap(lambda t_: denoise_noise(jax.random.fold_in(key, t_), batch, cfg, dtype))(t)


class RecurrentEngine(NamedTuple):
    """How a layer's recurrent gradient (nu_log, theta, B_re, B_im) is computed online.

    init(batch, cfg, dtype) -> state of one layer; advance(layer, state, u_t, s_t) -> state at t
    (s_t = λ s_{t-1} + B u_t, already known to the caller);
    states(state) -> s_t complex [B, N]; contract(layer, state, δ_t) -> {nu_log, theta, B_re, B_im}.
    """

    init: Callable
    advance: Callable
    states: Callable
    contract: Callable


TRACE_ENGINE = RecurrentEngine(
    init=lambda batch, cfg, dtype: layer_trace_init(batch, cfg.d_state, cfg.d_model, dtype),
    advance=layer_trace_update,
    states=lambda trace: trace.s,
    contract=layer_trace_grads,
)


def chunk_step(
    params, layer_states, x, x_next, noise, weights, engine=TRACE_ENGINE, activation="none"
):
    """C consecutive online steps of every layer: states, local errors, gradients.

    Args:
      x, x_next: current and next bytes, int [C, B] (time-major).
      noise: σ·ε per step [C, L-1, B, H].
      weights: per-step loss weights w_c [C] (1/(T-1) for a time average, 0 for padding).
      activation: φ of the layer readout (Config.activation).
    Returns:
      (layer_states after the C steps, losses [L] = Σ_c w_c mean_b L^ℓ_c, grads like params).

    Per layer, the C states are computed first (they need no traces), so the readout, the local
    errors δ_c and the instantaneous gradients of C, D and the head are batched over the C steps
    as matrix products; then a `lax.scan` over the C steps advances the traces and contracts each
    with its δ_c. Every quantity is still causal and per-step: with C = 1 this is one online step.
    """
    depth = len(params["layers"])
    u = model.embed(params, x)
    target_embedding = model.embed(params, x_next)
    new_states, losses = [], []
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for ell, layer in enumerate(params["layers"]):
        is_task = ell == depth - 1
        s = model.lru_scan(layer, u.swapaxes(0, 1), engine.states(layer_states[ell]))
        head = params["decoder"] if is_task else params["heads"][ell]
        target = x_next if is_task else target_embedding + noise[:, ell]
        readout = {"C_re": layer["C_re"], "C_im": layer["C_im"], "D": layer["D"], "head": head}
        (loss, y), (g_readout, g_re, g_im) = readout_value_and_grad(
            readout,
            s.real.swapaxes(0, 1),
            s.imag.swapaxes(0, 1),
            u,
            target,
            weights,
            is_task=is_task,
            activation=activation,
        )

        def trace_body(carry, inputs, layer=layer):
            state, acc = carry
            u_t, s_t, delta_t = inputs
            state = engine.advance(layer, state, u_t, s_t)
            acc = jax.tree_util.tree_map(jnp.add, acc, engine.contract(layer, state, delta_t))
            return (state, acc), None

        zero_acc = {
            name: jnp.zeros_like(layer[name]) for name in ("nu_log", "theta", "B_re", "B_im")
        }
        (state, layer_grads), _ = jax.lax.scan(
            trace_body, (layer_states[ell], zero_acc), (u, s.swapaxes(0, 1), g_re + 1j * g_im)
        )
        layer_grads.update(C_re=g_readout["C_re"], C_im=g_readout["C_im"], D=g_readout["D"])
        grads["layers"][ell] = layer_grads
        if is_task:
            grads["decoder"] = g_readout["head"]
        else:
            grads["heads"][ell] = g_readout["head"]
        losses.append(loss)
        new_states.append(state)
        u = u + y
    return new_states, jnp.stack(losses), grads


def scan_local_grads(params, tokens, key, cfg, engine=TRACE_ENGINE, chunk: int = 32):
    """The time-averaged local objective's gradients: `lax.scan` of `chunk_step` over the sequence.

    tokens int [B, T]; step t uses ε from fold_in(key, t); the T-1 steps are processed `chunk` at
    a time (the last chunk padded with zero-weight steps). Returns (losses [L], grads).
    """
    batch, length = tokens.shape
    steps = length - 1
    chunk = min(chunk, steps)
    n_chunks = -(-steps // chunk)
    dtype = params["embed"].dtype
    zero_states = [engine.init(batch, cfg, dtype) for _ in range(cfg.depth)]

    # Tokens are gathered inside the body (not scanned as xs) so that no [T, ...] temporary
    # is materialised: the compiled temp memory stays flat in T.
    def body(carry, _):
        c, layer_states, loss_sum, grad_sum = carry
        t = c * chunk + jnp.arange(chunk)
        x = jnp.take(tokens, jnp.minimum(t, steps - 1), axis=1).T
        x_next = jnp.take(tokens, jnp.minimum(t + 1, steps), axis=1).T
        weights = jnp.where(t < steps, 1.0 / steps, 0.0).astype(dtype)
        layer_states, losses, grads = chunk_step(
            params,
            layer_states,
            x,
            x_next,
            denoise_noise_at(key, t, batch, cfg, dtype),
            weights,
            engine,
            cfg.activation,
        )
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
        return (c + 1, layer_states, loss_sum + losses, grad_sum), None

    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    init = (jnp.int32(0), zero_states, jnp.zeros((cfg.depth,), dtype), zero_grads)
    (_, _, losses, grads), _ = jax.lax.scan(body, init, None, length=n_chunks)
    return losses, grads


def online_init(params: dict, batch_size: int, cfg: Config) -> list:
    """Zero carry for the online trainer: one LayerTrace per layer, batch_size rows."""
    validation.check_config(cfg)
    validation.check_params(params, cfg)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dtype = params["embed"].dtype
    return [layer_trace_init(batch_size, cfg.d_state, cfg.d_model, dtype) for _ in range(cfg.depth)]


def online_step(params, carry, token_t, token_next, key, cfg: Config, loss_scale=1.0):
    """One online step of the local trainer on a stream, in constant memory.

    Args:
      params: the stack's parameters (may change between calls: the traces then mix parameter
        versions, the usual online-learning approximation).
      carry: list of LayerTrace from `online_init` or a previous step.
      token_t: current bytes x_t, int [B]; token_next: next bytes x_{t+1}, int [B].
      key: PRNG key for this step's denoising noise ε [L-1, B, H].
      loss_scale: multiplies losses and gradients (1/(T-1) makes the sum over a window equal
        `local_grads` on it).
    Returns:
      (carry, losses [L], grads): losses are loss_scale · mean_b L^ℓ_t; grads has the structure
      of params (embed: zeros), layer ℓ's entries from L^ℓ_t alone.
    """
    validation.check_config(cfg)
    validation.check_params(params, cfg)
    validation.check_key(key)
    batch = carry[0].s.shape[0]
    validation.check_step_tokens(token_t, batch, cfg, "token_t")
    validation.check_step_tokens(token_next, batch, cfg, "token_next")
    return _online_step_jit(params, carry, token_t, token_next, key, loss_scale, cfg)


@jax.jit(static_argnames="cfg")
def _online_step_jit(params, carry, token_t, token_next, key, loss_scale, cfg):
    noise = denoise_noise(key, token_t.shape[0], cfg, params["embed"].dtype)
    weights = jnp.full((1,), loss_scale, params["embed"].dtype)
    return chunk_step(
        params,
        carry,
        token_t[None],
        token_next[None],
        noise[None],
        weights,
        activation=cfg.activation,
    )


def local_grads(params: dict, tokens: jax.Array, key: jax.Array, cfg: Config, *, chunk: int = 32):
    """Exact gradients of every layer's local objective by forward traces, one `lax.scan`.

    Objective: L^ℓ = mean_{b, t<T-1} L^ℓ_t with L^ℓ_t = ||g^ℓ(y^ℓ_t) - x̃_{t+1}||² (ℓ < L) and
    L^L_t = CE(W_out y^L_t, x_{t+1}); inputs u^ℓ stop-gradded; ε_t from fold_in(key, t).
    No reverse-mode pass crosses a timestep or a layer; temp memory is independent of T.

    Args:
      params: from `lru_local.init`; tokens: int [B, T]; key: PRNG key; cfg: Config.
      chunk: steps per scan iteration (any value gives the same gradients; 1 is the plain
        per-step online loop, larger values batch the readout into bigger matrix products).
    Returns:
      losses [L] (per-layer local losses; the last is the task CE in nats), grads like params.
    """
    validation.check_sequence_call(params, tokens, cfg, key)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return _local_grads_jit(params, tokens, key, cfg, chunk)


@jax.jit(static_argnames=("cfg", "chunk"))
def _local_grads_jit(params, tokens, key, cfg, chunk):
    return scan_local_grads(params, tokens, key, cfg, chunk=chunk)
