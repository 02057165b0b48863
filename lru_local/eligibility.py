"""Exact forward-mode eligibility traces for the local (B = L) objective: the trace engine.

Layer ℓ is the last layer of its own one-layer network (its input u^ℓ is stop-gradded, its loss
L^ℓ sits on its own output), so its only recurrent path from parameters to loss is its own
diagonal state s_t = λ ⊙ s_{t-1} + γ ⊙ (B n_t), and the sensitivities close per unit i
(Zucchet et al.):

    e^λ_{i,t} = λ_i e^λ_{i,t-1} + s_{i,t-1}             e^λ_t = ∂s_t/∂λ        complex [N]
    e^B_{i,t} = λ_i e^B_{i,t-1} + n_t                   ∂s_{t,i}/∂B_i = γ_i e^B_{i,t}: [N, H]
    ∂s_{t,i}/∂gamma_log_i = s_{t,i}                     (same recursion as s, same zero start)

With the local error at the state δ_t = ∂L_t/∂Re(s_t) + i ∂L_t/∂Im(s_t) (one vector-Jacobian
product through the head and the instantaneous block, spatially local, within the timestep), the
real gradients are dL_t = Re(conj(δ_t) ds_t), hence

    ∂L_t/∂nu_log_i    = Re(conj(δ_i) e^λ_i λ_i) · (-exp(nu_log_i))   (dλ/dnu_log = -λ exp(nu_log))
    ∂L_t/∂theta_i     = -Im(conj(δ_i) e^λ_i λ_i)                     (dλ/dtheta  = i λ)
    ∂L_t/∂B_re_ij     =  γ_i Re(conj(δ_i) e^B_i[j])                   (ds/dB_re = γ e^B)
    ∂L_t/∂B_im_ij     = -γ_i Im(conj(δ_i) e^B_i[j])                   (ds/dB_im = i γ e^B)
    ∂L_t/∂gamma_log_i =  Re(conj(δ_i) s_i)                            (gamma "trainable" only)

Learned embedding (Config.embedding = "learned"): layer 1's loss reaches E through its input
u^1_t = E[x_t]. With n_t = Ê[x_t], Ê = E (norm "none") or Ê = LN(E) row-wise (norm "layer", which
acts on each row alone, so LN(E[x]) = LN(E)[x]), the state path is
∂s_{t,i}/∂Ê_v = γ_i B_i c_{t,i,v} with the one-hot trace

    c_{i,t} = λ_i c_{i,t-1} + onehot(x_t)               c_t: complex [N, V] per batch row

so ∂L/∂Ê = Re(Gᵀ (γ ⊙ B)) with G = Σ_t Σ_b conj(δ_t) c_t [N, V]: G is accumulated per step, the
product with B once per chunk. ∂L/∂E = J_LNᵀ ∂L/∂Ê (norm "layer", one vjp per chunk) plus the
instantaneous part Σ_t onehot(x_t)ᵀ ∂L_t/∂u_t (the D ⊙ n term, the stream read by the head),
which the readout's vjp returns. All exact; nothing crosses a timestep backwards.

C, D, the GLU and the heads sit downstream of the state, so their gradients are instantaneous. A
forward `lax.scan` over the sequence carries (s, e^λ, e^B [, c]) per layer and batch row: memory
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
    # e^B_t[i, b, j] = ∂s_{t,i}/∂B_ij / γ_i for batch row b, complex [N, B, H]. Unit-major, so the
    # per-step contraction Σ_b conj(δ_{b,i}) e^B[i, b, :] is a batched matvec over units
    # (measured 3× faster on CPU than the batch-major [B, N, H] layout).
    e_B: jax.Array
    # c_t[i, b, v] = Σ_{τ≤t} λ_i^{t-τ} [x_{b,τ} = v], complex [N, B, V]: the one-hot trace of the
    # layer that owns a learned embedding (layer 1); None for every other layer.
    c: jax.Array | None = None


def layer_trace_init(
    batch: int, d_state: int, d_model: int, dtype=jnp.float32, vocab: int | None = None
) -> LayerTrace:
    """Zero state and traces (s_{-1} = 0) for `batch` rows; a one-hot trace if vocab is given."""
    cdtype = jnp.result_type(dtype, jnp.complex64)
    return LayerTrace(
        s=jnp.zeros((batch, d_state), cdtype),
        e_lam=jnp.zeros((batch, d_state), cdtype),
        e_B=jnp.zeros((d_state, batch, d_model), cdtype),
        c=None if vocab is None else jnp.zeros((d_state, batch, vocab), cdtype),
    )


def layer_trace_update(
    layer: dict,
    trace: LayerTrace,
    u: jax.Array,
    s: jax.Array | None = None,
    x: jax.Array | None = None,
) -> LayerTrace:
    """Advances s, e^λ, e^B (and c) by one step on the state input n_t = u [B, H].

    s: the new state s_t [B, N] if the caller already has it (computed as λ s_{t-1} + γ B n_t).
    x: the bytes x_t int [B], needed only if the trace carries a one-hot trace c.
    """
    lam = model.eigenvalues(layer)
    c = trace.c
    if c is not None:
        c = lam[:, None, None] * c + jax.nn.one_hot(x, c.shape[-1], dtype=c.dtype)[None]
    return LayerTrace(
        s=lam * trace.s + model.input_projection(layer, u) if s is None else s,
        e_lam=lam * trace.e_lam + trace.s,
        e_B=lam[:, None, None] * trace.e_B + u[None].astype(trace.e_B.dtype),
        c=c,
    )


def layer_trace_contract(layer: dict, trace: LayerTrace, delta: jax.Array) -> dict:
    """The per-step sums over the batch that `layer_trace_finish` turns into gradients.

    delta: δ_t complex [B, N]. Returns complex {"lam": Σ_b conj(δ) e^λ [N], "B": Σ_b conj(δ) e^B
    [N, H]} plus "gamma": Σ_b conj(δ) s [N] (trainable γ) and "embed": Σ_b conj(δ) c [N, V] (the
    owner of a learned E). Linear in δ, so sums over steps may be finished once.
    """
    conj_delta = jnp.conj(delta)
    raw = {
        "lam": jnp.sum(conj_delta * trace.e_lam, axis=0),
        "B": jnp.einsum("bn,nbh->nh", conj_delta, trace.e_B),
    }
    if "gamma_log" in layer:
        raw["gamma"] = jnp.sum(conj_delta * trace.s, axis=0)
    if trace.c is not None:
        raw["embed"] = jnp.einsum("bn,nbv->nv", conj_delta, trace.c)
    return raw


def layer_trace_finish(layer: dict, raw: dict) -> dict:
    """Real gradients from (sums of) `layer_trace_contract` (the equations of the module doc).

    Returns {"nu_log": [N], "theta": [N], "B_re": [N, H], "B_im": [N, H]} plus "gamma_log" [N]
    and "embed_input" [V, H] = ∂L/∂Ê through the state, when the raw sums hold them.
    """
    lam = model.eigenvalues(layer)
    w = raw["lam"] * lam
    gamma = model.input_gamma(layer)
    z = raw["B"] if gamma is None else gamma[:, None] * raw["B"]
    grads = {
        "nu_log": -jnp.exp(layer["nu_log"]) * w.real,
        "theta": -w.imag,
        "B_re": z.real,
        "B_im": -z.imag,
    }
    if "gamma" in raw:
        grads["gamma_log"] = raw["gamma"].real
    if "embed" in raw:
        b_re, b_im = layer["B_re"], layer["B_im"]
        if gamma is not None:
            b_re, b_im = gamma[:, None] * b_re, gamma[:, None] * b_im
        grads["embed_input"] = raw["embed"].real.T @ b_re - raw["embed"].imag.T @ b_im
    return grads


def layer_trace_grads(layer: dict, trace: LayerTrace, delta: jax.Array) -> dict:
    """Contracts the local error with the traces, summed over the batch.

    Args:
      layer: the layer's parameters (for λ, nu_log and γ).
      trace: traces at step t (after `layer_trace_update`).
      delta: δ_t = ∂L_t/∂Re(s_t) + i ∂L_t/∂Im(s_t), complex [B, N].
    Returns:
      {"nu_log": [N], "theta": [N], "B_re": [N, H], "B_im": [N, H]} (and "gamma_log",
      "embed_input" where they apply), real.
    """
    return layer_trace_finish(layer, layer_trace_contract(layer, trace, delta))


READOUT_KEYS = ("C_re", "C_im", "D", "W1", "b1", "W2", "b2")  # the instantaneous layer leaves


def readout_loss(
    readout: dict, s_re, s_im, u, target, weights, *, is_task: bool, arch: Config | str = "none"
):
    """Weighted sum over steps of layer ℓ's batch-mean instantaneous loss, given its states.

    readout: the layer's READOUT_KEYS present plus "head"; s_re, s_im [C, B, N] (C steps);
    u: the layer's raw input u_t [C, B, H]; target: the noised next embedding x̃_{t+1} [C, B, H]
    for hidden layers, or the next bytes x_{t+1} [C, B] for the task head; weights [C].
    Returns (Σ_c w_c mean_b L_c, y [C, B, H]). The loss of step c depends on (s_c, u_c) only,
    so its gradient w.r.t. s is the per-step local error δ_c (times w_c): C instantaneous
    errors batched, no gradient crosses a timestep.
    """
    y = model.layer_output(readout, s_re + 1j * s_im, u, arch)
    h = model.head_features(u, y, arch)
    if is_task:
        per_row = model.task_loss(readout["head"], h, target)
    else:
        per_row = model.denoise_loss(readout["head"], h, target)
    return jnp.sum(weights * jnp.mean(per_row, axis=-1)), y


readout_value_and_grad = jax.value_and_grad(readout_loss, argnums=(0, 1, 2), has_aux=True)
# Also ∂/∂u: only for the layer that owns a learned embedding (u^1 = E[x] is not a constant).
readout_value_and_grad_u = jax.value_and_grad(readout_loss, argnums=(0, 1, 2, 3), has_aux=True)


def denoise_noise(key: jax.Array, batch: int, cfg: Config, dtype) -> jax.Array:
    """σ·ε for one step: [L-1, B, H]; local_grads uses key_t = fold_in(key, t) at step t."""
    return cfg.noise_std * jax.random.normal(key, (cfg.depth - 1, batch, cfg.d_model), dtype)


def denoise_noise_at(key: jax.Array, t: jax.Array, batch: int, cfg: Config, dtype) -> jax.Array:
    """σ·ε for steps t [C] (int), each from fold_in(key, t): [C, L-1, B, H]."""
    return jax.vmap(lambda t_: denoise_noise(jax.random.fold_in(key, t_), batch, cfg, dtype))(t)


class RecurrentEngine(NamedTuple):
    """How a layer's recurrent gradient (nu_log, theta, B_re, B_im [, gamma_log, E]) is computed.

    init(batch, cfg, dtype, owns_embedding) -> state of one layer;
    advance(layer, state, n_t, s_t, x_t, table) -> state at t (n_t [B, H] the state input,
    s_t = λ s_{t-1} + γ B n_t already known to the caller, x_t int [B] the bytes, table the
    input table Ê [V, H] = layer_input(E) for the owner of a learned E, else None);
    states(state) -> s_t complex [B, N]; contract(layer, state, δ_t) -> per-step sums (a pytree,
    linear in δ_t); finish(layer, summed) -> {nu_log, theta, B_re, B_im [, gamma_log,
    embed_input]} with embed_input = ∂L/∂Ê through the state.
    """

    init: Callable
    advance: Callable
    states: Callable
    contract: Callable
    finish: Callable


def _trace_init(batch, cfg, dtype, owns_embedding=False):
    vocab = cfg.vocab if owns_embedding else None
    return layer_trace_init(batch, cfg.d_state, cfg.d_model, dtype, vocab)


TRACE_ENGINE = RecurrentEngine(
    init=_trace_init,
    advance=lambda layer, trace, n, s, x=None, table=None: layer_trace_update(
        layer, trace, n, s, x
    ),
    states=lambda trace: trace.s,
    contract=layer_trace_contract,
    finish=layer_trace_finish,
)


def init_layer_states(batch: int, cfg: Config, dtype, engine=TRACE_ENGINE) -> list:
    """Zero per-layer engine states; layer 1 owns the embedding if cfg.embedding is "learned"."""
    learned = cfg.embedding == "learned"
    return [engine.init(batch, cfg, dtype, learned and ell == 0) for ell in range(cfg.depth)]


def _embedding_grad(params, x, g_u, g_table, cfg):
    """∂L/∂E of the embedding's owner: Σ_t onehot(x_t)ᵀ ∂L_t/∂u_t + J_LNᵀ ∂L/∂Ê. x [C, B]."""
    table = params["embed"]
    g_embed = jnp.zeros_like(table).at[x.reshape(-1)].add(g_u.reshape(-1, table.shape[-1]))
    _, vjp = jax.vjp(lambda e: model.layer_input(e, cfg), table)
    return g_embed + vjp(g_table)[0]


def chunk_step(params, layer_states, x, x_next, noise, weights, engine=TRACE_ENGINE, arch="none"):
    """C consecutive online steps of every layer: states, local errors, gradients.

    Args:
      x, x_next: current and next bytes, int [C, B] (time-major).
      noise: σ·ε per step [C, L-1, B, H].
      weights: per-step loss weights w_c [C] (1/(T-1) for a time average, 0 for padding).
      arch: the architecture (a Config, or Config.activation for the post's block).
    Returns:
      (layer_states after the C steps, losses [L] = Σ_c w_c mean_b L^ℓ_c, grads like params).

    Per layer, the C states are computed first (they need no traces), so the readout, the local
    errors δ_c and the instantaneous gradients of C, D, the GLU and the head are batched over the
    C steps as matrix products; then a `lax.scan` over the C steps advances the traces and
    contracts each with its δ_c. Every quantity is still causal and per-step: with C = 1 this is
    one online step.
    """
    cfg = model.as_config(arch)
    depth = len(params["layers"])
    u = model.embed(params, x, cfg)
    target_embedding = model.target_embedding(params, x_next, cfg)
    new_states, losses = [], []
    grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    for ell, layer in enumerate(params["layers"]):
        is_task = ell == depth - 1
        owns_embedding = cfg.embedding == "learned" and ell == 0
        n = model.layer_input(u, cfg)
        s = model.lru_scan(layer, n.swapaxes(0, 1), engine.states(layer_states[ell]))
        head = params["decoder"] if is_task else params["heads"][ell]
        target = x_next if is_task else target_embedding + noise[:, ell]
        readout = {name: layer[name] for name in READOUT_KEYS if name in layer}
        readout["head"] = head
        value_and_grad = readout_value_and_grad_u if owns_embedding else readout_value_and_grad
        (loss, y), g = value_and_grad(
            readout,
            s.real.swapaxes(0, 1),
            s.imag.swapaxes(0, 1),
            u,
            target,
            weights,
            is_task=is_task,
            arch=cfg,
        )
        g_readout, g_re, g_im = g[:3]
        table = model.layer_input(params["embed"], cfg) if owns_embedding else None

        def trace_body(carry, inputs, layer=layer, table=table):
            state, acc = carry
            n_t, s_t, delta_t, x_t = inputs
            state = engine.advance(layer, state, n_t, s_t, x_t, table)
            acc = jax.tree_util.tree_map(jnp.add, acc, engine.contract(layer, state, delta_t))
            return (state, acc), None

        deltas = g_re + 1j * g_im
        zero_acc = jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape, a.dtype),
            jax.eval_shape(engine.contract, layer, layer_states[ell], deltas[0]),
        )
        (state, acc), _ = jax.lax.scan(
            trace_body, (layer_states[ell], zero_acc), (n, s.swapaxes(0, 1), deltas, x)
        )
        layer_grads = engine.finish(layer, acc)
        g_table = layer_grads.pop("embed_input", None)
        layer_grads.update({name: g_readout[name] for name in readout if name != "head"})
        grads["layers"][ell] = layer_grads
        if owns_embedding:
            grads["embed"] = _embedding_grad(params, x, g[3], g_table, cfg)
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
    zero_states = init_layer_states(batch, cfg, dtype, engine)

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
            cfg,
        )
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
        return (c + 1, layer_states, loss_sum + losses, grad_sum), None

    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    init = (jnp.int32(0), zero_states, jnp.zeros((cfg.depth,), dtype), zero_grads)
    (_, _, losses, grads), _ = jax.lax.scan(body, init, None, length=n_chunks)
    return losses, grads


def online_init(params: dict, batch_size: int, cfg: Config) -> list:
    """Zero carry for the online trainer: one LayerTrace per layer, batch_size rows (layer 1's
    with a one-hot trace c [N, B, V] if the embedding is learned)."""
    validation.check_config(cfg)
    validation.check_params(params, cfg)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return init_layer_states(batch_size, cfg, params["embed"].dtype)


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
      of params (embed: zeros unless learned, then layer 1's), layer ℓ's entries from L^ℓ_t alone.
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
        params, carry, token_t[None], token_next[None], noise[None], weights, arch=cfg
    )


def local_grads(params: dict, tokens: jax.Array, key: jax.Array, cfg: Config, *, chunk: int = 32):
    """Exact gradients of every layer's local objective by forward traces, one `lax.scan`.

    Objective: L^ℓ = mean_{b, t<T-1} L^ℓ_t with L^ℓ_t = ||g^ℓ(h^ℓ_t) - x̃_{t+1}||² (ℓ < L) and
    L^L_t = CE(W_out h^L_t, x_{t+1}); inputs u^ℓ (ℓ ≥ 2) stop-gradded; ε_t from fold_in(key, t).
    No reverse-mode pass crosses a timestep or a layer; temp memory is independent of T.

    Args:
      params: from `lru_local.init`; tokens: int [B, T]; key: PRNG key; cfg: Config.
      chunk: steps per scan iteration (any value gives the same gradients; 1 is the plain
        per-step online loop, larger values batch the readout into bigger matrix products).
    Returns:
      losses [L] (per-layer local losses; the last is the task CE in nats), grads like params
      (embed: zeros if frozen; if learned, ∂L^1/∂E).
    """
    validation.check_sequence_call(params, tokens, cfg, key)
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return _local_grads_jit(params, tokens, key, cfg, chunk)


@jax.jit(static_argnames=("cfg", "chunk"))
def _local_grads_jit(params, tokens, key, cfg, chunk):
    return scan_local_grads(params, tokens, key, cfg, chunk=chunk)
