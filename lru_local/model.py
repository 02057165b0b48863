"""The residual stack of complex diagonal LRU layers: parameters, forward pass, readout losses.

Layer ℓ (Zucchet et al.; Orvieto et al. 2023), with u^ℓ_t ∈ R^H the residual stream entering it:

    s_t = λ ⊙ s_{t-1} + B u_t,        λ = exp(-exp(nu_log) + i·theta)          s_t ∈ C^N
    y_t = φ(Re(C s_t)) + D ⊙ u_t,     u^{ℓ+1}_t = u^ℓ_t + y^ℓ_t                  y_t ∈ R^H

φ is the identity in the post's stack (Config.activation = "none": the whole stack is then linear
in the embeddings up to the softmax) or GELU (Config.activation = "gelu"). Either way φ acts after
the state, so the traces stay exact: δ_t = ∂L_t/∂s_t simply passes through φ'.

Parameters are stored as real arrays so gradients are real and comparable leaf by leaf:

    params = {
      "embed":   E [V, H]                        fixed random byte embedding (never trained)
      "layers":  [{"nu_log": [N], "theta": [N], "B_re": [N, H], "B_im": [N, H],
                   "C_re": [H, N], "C_im": [H, N], "D": [H]}] * L
      "heads":   [{"W": [H, H], "b": [H]}] * (L - 1)   g^ℓ(y) = y W + b, hidden layers only
      "decoder": {"W": [H, V], "b": [V]}                logits = y^L W_out + b_out
    }

The embedding is frozen in every trainer: the local trainer stop-grads each layer's input, so E
could get no local gradient; freezing it for BPTT too keeps depth 1 the same objective under both
trainers (the post's sanity check) and keeps the denoising targets E[x_{t+1}] stationary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lru_local.config import Config


def init(key: jax.Array, cfg: Config, dtype=jnp.float32) -> dict:
    """Samples parameters: ring-initialised λ, B scaled by sqrt(1 - |λ|²), Gaussian C, D, heads."""
    H, N, V, L = cfg.d_model, cfg.d_state, cfg.vocab, cfg.depth
    k_embed, k_layers, k_heads, k_dec = jax.random.split(key, 4)

    def normal(k, shape, std):
        return std * jax.random.normal(k, shape, dtype=dtype)

    layers = []
    for k in jax.random.split(k_layers, L):
        k_r, k_p, k_bre, k_bim, k_cre, k_cim, k_d = jax.random.split(k, 7)
        # |λ|² ~ U[r_min², r_max²]; nu = -log|λ| stored as nu_log = log(nu).
        radius_sq = jax.random.uniform(
            k_r, (N,), dtype=dtype, minval=cfg.r_min**2, maxval=cfg.r_max**2
        )
        nu_log = jnp.log(-0.5 * jnp.log(radius_sq))
        theta = jax.random.uniform(k_p, (N,), dtype=dtype, maxval=cfg.max_phase)
        gamma = jnp.sqrt(1.0 - radius_sq)[:, None]  # input normalisation, folded into B at init
        b_std = (2.0 * H) ** -0.5
        layers.append(
            {
                "nu_log": nu_log,
                "theta": theta,
                "B_re": gamma * normal(k_bre, (N, H), b_std),
                "B_im": gamma * normal(k_bim, (N, H), b_std),
                "C_re": normal(k_cre, (H, N), N**-0.5),
                "C_im": normal(k_cim, (H, N), N**-0.5),
                "D": normal(k_d, (H,), cfg.d_init_std),
            }
        )
    heads = [
        {"W": normal(k, (H, H), H**-0.5), "b": jnp.zeros((H,), dtype)}
        for k in jax.random.split(k_heads, max(L - 1, 1))[: L - 1]
    ]
    return {
        "embed": normal(k_embed, (V, H), cfg.embed_std),
        "layers": layers,
        "heads": heads,
        "decoder": {"W": normal(k_dec, (H, V), H**-0.5), "b": jnp.zeros((V,), dtype)},
    }


def eigenvalues(layer: dict) -> jax.Array:
    """λ = exp(-exp(nu_log) + i·theta), complex [N]; |λ| < 1 for every real nu_log."""
    return jnp.exp(-jnp.exp(layer["nu_log"]) + 1j * layer["theta"])


def input_projection(layer: dict, u: jax.Array) -> jax.Array:
    """B u_t for u [..., H] -> complex [..., N]."""
    return u @ layer["B_re"].T + 1j * (u @ layer["B_im"].T)


ACTIVATIONS = {"none": lambda x: x, "gelu": jax.nn.gelu}


def layer_output(layer: dict, s: jax.Array, u: jax.Array, activation: str = "none") -> jax.Array:
    """y_t = φ(Re(C s_t)) + D ⊙ u_t for s complex [..., N], u [..., H] -> [..., H]."""
    readout = s.real @ layer["C_re"].T - s.imag @ layer["C_im"].T
    return ACTIVATIONS[activation](readout) + layer["D"] * u


def denoise_loss(head: dict, y: jax.Array, target: jax.Array) -> jax.Array:
    """L^ℓ_t = ||g^ℓ(y_t) - x̃_{t+1}||², summed over H: y, target [..., H] -> [...]."""
    residual = y @ head["W"] + head["b"] - target
    return jnp.sum(residual**2, axis=-1)


def task_loss(decoder: dict, y: jax.Array, next_tokens: jax.Array) -> jax.Array:
    """L^L_t = CE(W_out y_t + b_out, x_{t+1}) in nats: y [..., H], next_tokens [...] -> [...]."""
    logits = y @ decoder["W"] + decoder["b"]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return log_z - jnp.take_along_axis(logits, next_tokens[..., None], axis=-1)[..., 0]


def embed(params: dict, tokens: jax.Array) -> jax.Array:
    """u^1_t = E[x_t] for tokens [...] -> [..., H]; E is frozen (stop-gradient)."""
    return jax.lax.stop_gradient(params["embed"])[tokens]


def lru_scan(layer: dict, u: jax.Array, s_init: jax.Array | None = None) -> jax.Array:
    """All states of one layer by a parallel associative scan over time.

    Args:
      layer: one layer's parameters.
      u: inputs [B, T, H].
      s_init: state s_{-1} before the first input, complex [B, N] (zeros if None).
    Returns:
      s: complex states [B, T, N], s_t = λ s_{t-1} + B u_t.
    """
    lam = eigenvalues(layer)
    bu = input_projection(layer, u)
    if s_init is not None:
        bu = bu.at[:, 0].add(lam * s_init)
    decay = jnp.broadcast_to(lam, bu.shape)

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    return jax.lax.associative_scan(combine, (decay, bu), axis=1)[1]


def stack_forward(
    params: dict,
    inputs: jax.Array,
    *,
    local: bool,
    s_init: list | None = None,
    activation: str = "none",
):
    """Runs the residual stack on input bytes.

    Args:
      params: see module docstring.
      inputs: int tokens x_t [B, T].
      local: if True, each layer's input u^ℓ is stop-gradded, so autodiff of layer ℓ's loss
        reaches θ^ℓ only (the local objective); if False, gradients flow through depth (BPTT).
      s_init: optional per-layer initial states, complex [B, N] each.
      activation: φ of the layer readout (Config.activation).
    Returns:
      ys: per-layer outputs y^ℓ [B, T, H]; us: per-layer inputs u^ℓ [B, T, H];
      s_last: per-layer final states s^ℓ_{T-1}, complex [B, N].
    """
    u = embed(params, inputs)
    ys, us, s_last = [], [], []
    for ell, layer in enumerate(params["layers"]):
        u_in = jax.lax.stop_gradient(u) if local else u
        s = lru_scan(layer, u_in, None if s_init is None else s_init[ell])
        y = layer_output(layer, s, u_in, activation)
        ys.append(y)
        us.append(u_in)
        s_last.append(s[:, -1])
        u = u_in + y
    return ys, us, s_last


def logits(params: dict, tokens: jax.Array, activation: str = "none") -> jax.Array:
    """Next-byte logits: tokens int [B, T] -> logits [B, T-1, V] predicting tokens[:, 1:]."""
    ys, _, _ = stack_forward(params, tokens[:, :-1], local=False, activation=activation)
    return ys[-1] @ params["decoder"]["W"] + params["decoder"]["b"]
