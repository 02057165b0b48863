"""The residual stack of complex diagonal LRU layers: parameters, forward pass, readout losses.

Layer ℓ (Zucchet et al.; Orvieto et al. 2023), with u^ℓ_t ∈ R^H the residual stream entering it:

    n_t = u_t  (norm "none")   or   n_t = LN(u_t)  (norm "layer", parameter-free)
    s_t = λ ⊙ s_{t-1} + γ ⊙ (B n_t),  λ = exp(-exp(nu_log) + i·theta)            s_t ∈ C^N
    y_t = φ(Re(C s_t)) + D ⊙ n_t                              (block "lru")       y_t ∈ R^H
    z_t = GELU(Re(C s_t) + D ⊙ n_t),  y_t = (z_t W₁ + b₁) ⊙ σ(z_t W₂ + b₂)   (block "lru_glu")
    u^{ℓ+1}_t = u^ℓ_t + y^ℓ_t

γ = 1 with the normalisation sqrt(1 - |λ|²) folded into B at init (Config.gamma = "folded", the
post), or γ = exp(gamma_log) trainable (Config.gamma = "trainable", Orvieto/Zucchet). φ is the
identity in the post's stack (Config.activation = "none": the whole stack is then linear in the
embeddings up to the softmax) or GELU. Everything after s_t is instantaneous (a function of s_t
and u_t only), so the traces stay exact: δ_t = ∂L_t/∂s_t simply passes through it.

Heads read the features h^ℓ_t = y^ℓ_t (Config.head_input = "output", the post) or
h^ℓ_t = LN(u^{ℓ+1}_t) (head_input = "stream"); L^ℓ_t = ||h^ℓ_t W + b − x̃_{t+1}||² (ℓ < L) and
L^L_t = CE(h^L_t W_out + b_out, x_{t+1}).

Parameters are stored as real arrays so gradients are real and comparable leaf by leaf:

    params = {
      "embed":   E [V, H]                        byte embedding (frozen, or learned)
      "layers":  [{"nu_log": [N], "theta": [N], "B_re": [N, H], "B_im": [N, H],
                   "C_re": [H, N], "C_im": [H, N], "D": [H],
                   "gamma_log": [N]                         (gamma "trainable" only)
                   "W1": [H, H], "b1": [H], "W2": [H, H], "b2": [H]   (block "lru_glu" only)
                  }] * L
      "heads":   [{"W": [H, H], "b": [H]}] * (L - 1)   g^ℓ(h) = h W + b, hidden layers only
      "decoder": {"W": [H, V], "b": [V]}                logits = h^L W_out + b_out
    }

Embedding "frozen" (the post): E is a fixed random matrix in every trainer, which keeps depth 1 the
same objective under both trainers and the denoising targets E[x_{t+1}] stationary. "learned": E
is trained by both trainers (in the local trainer through layer 1's loss only, exactly, by a
one-hot trace; see `eligibility`), and the targets are the stop-gradded L2-normalised rows
E[x_{t+1}] / ||E[x_{t+1}]|| (a learned E could otherwise shrink them to zero).

Functions that take `arch` accept a Config or, for the post's block, just its activation string.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lru_local.config import Config

LN_EPS = 1e-6  # LayerNorm's ε (flax's default, as in Zucchet et al.'s code)


def as_config(arch: Config | str) -> Config:
    """The architecture a function should build: a Config, or an activation name (the post's
    block with that φ; the legacy signature of the functions below)."""
    return arch if isinstance(arch, Config) else Config(activation=arch)


def init(key: jax.Array, cfg: Config, dtype=jnp.float32) -> dict:
    """Samples parameters: ring-initialised λ, B scaled by sqrt(1 - |λ|²), Gaussian C, D, heads.

    gamma "trainable": B is left unscaled and gamma_log = log sqrt(1 - |λ|²) instead (the same
    γ ⊙ B n at init). block "lru_glu": W₁, W₂ ~ N(0, 1/H) (LeCun normal), b₁ = b₂ = 0, drawn from
    fold_in(layer key, 7), so the other parameters equal those of the plain block.
    """
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
        gamma = jnp.sqrt(1.0 - radius_sq)[:, None]  # input normalisation
        b_scale = gamma if cfg.gamma == "folded" else 1.0
        b_std = (2.0 * H) ** -0.5
        layer = {
            "nu_log": nu_log,
            "theta": theta,
            "B_re": b_scale * normal(k_bre, (N, H), b_std),
            "B_im": b_scale * normal(k_bim, (N, H), b_std),
            "C_re": normal(k_cre, (H, N), N**-0.5),
            "C_im": normal(k_cim, (H, N), N**-0.5),
            "D": normal(k_d, (H,), cfg.d_init_std),
        }
        if cfg.gamma == "trainable":
            layer["gamma_log"] = jnp.log(gamma[:, 0])
        if cfg.block == "lru_glu":
            k_w1, k_w2 = jax.random.split(jax.random.fold_in(k, 7))
            layer.update(
                W1=normal(k_w1, (H, H), H**-0.5),
                b1=jnp.zeros((H,), dtype),
                W2=normal(k_w2, (H, H), H**-0.5),
                b2=jnp.zeros((H,), dtype),
            )
        layers.append(layer)
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


def input_gamma(layer: dict):
    """γ [N] = exp(gamma_log) if the layer has a trainable γ, else None (γ = 1, folded into B)."""
    return jnp.exp(layer["gamma_log"]) if "gamma_log" in layer else None


def input_projection(layer: dict, n: jax.Array) -> jax.Array:
    """γ ⊙ (B n_t) for n [..., H] -> complex [..., N] (γ = 1 without a gamma_log leaf)."""
    bn = n @ layer["B_re"].T + 1j * (n @ layer["B_im"].T)
    gamma = input_gamma(layer)
    return bn if gamma is None else gamma * bn


def layer_norm(x: jax.Array) -> jax.Array:
    """Parameter-free LN(x) = (x − mean x) / sqrt(var x + ε) over the last axis [..., H]."""
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred**2, axis=-1, keepdims=True) + LN_EPS)


ACTIVATIONS = {"none": lambda x: x, "gelu": jax.nn.gelu}
NORMS = {"none": lambda u: u, "layer": layer_norm}


def layer_input(u: jax.Array, arch: Config | str = "none") -> jax.Array:
    """n_t = u_t (norm "none") or LN(u_t) (norm "layer"): [..., H] -> [..., H]."""
    return NORMS[as_config(arch).norm](u)


def _lru_block(layer, readout, n, activation):
    return ACTIVATIONS[activation](readout) + layer["D"] * n


def _lru_glu_block(layer, readout, n, activation):
    del activation  # Config forbids a φ here: the GELU is built in
    z = jax.nn.gelu(readout + layer["D"] * n)
    return (z @ layer["W1"] + layer["b1"]) * jax.nn.sigmoid(z @ layer["W2"] + layer["b2"])


BLOCKS = {"lru": _lru_block, "lru_glu": _lru_glu_block}


def layer_output(layer: dict, s: jax.Array, u: jax.Array, arch: Config | str = "none"):
    """y_t for s complex [..., N] and the raw layer input u [..., H] -> [..., H].

    block "lru": y = φ(Re(C s)) + D ⊙ n; block "lru_glu": z = GELU(Re(C s) + D ⊙ n),
    y = (z W₁ + b₁) ⊙ σ(z W₂ + b₂); n = layer_input(u).
    """
    cfg = as_config(arch)
    if cfg.block == "lru" and "W1" in layer:
        raise ValueError(
            "the parameters hold a GLU (W1, b1, W2, b2) but the architecture says block='lru': "
            "pass the model's lru_local.Config (not just its activation)"
        )
    readout = s.real @ layer["C_re"].T - s.imag @ layer["C_im"].T
    return BLOCKS[cfg.block](layer, readout, layer_input(u, cfg), cfg.activation)


HEAD_INPUTS = {"output": lambda u, y: y, "stream": lambda u, y: layer_norm(u + y)}


def head_features(u: jax.Array, y: jax.Array, arch: Config | str = "none") -> jax.Array:
    """h^ℓ_t: y^ℓ_t (head_input "output") or LN(u^ℓ_t + y^ℓ_t) (head_input "stream"): [..., H]."""
    return HEAD_INPUTS[as_config(arch).head_input](u, y)


def denoise_loss(head: dict, y: jax.Array, target: jax.Array) -> jax.Array:
    """L^ℓ_t = ||g^ℓ(h_t) - x̃_{t+1}||², summed over H: h (here y), target [..., H] -> [...]."""
    residual = y @ head["W"] + head["b"] - target
    return jnp.sum(residual**2, axis=-1)


def task_loss(decoder: dict, y: jax.Array, next_tokens: jax.Array) -> jax.Array:
    """L^L_t = CE(W_out h_t + b_out, x_{t+1}) in nats: h (here y) [..., H], next_tokens [...]."""
    logits = y @ decoder["W"] + decoder["b"]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    return log_z - jnp.take_along_axis(logits, next_tokens[..., None], axis=-1)[..., 0]


def embed(params: dict, tokens: jax.Array, arch: Config | str = "none") -> jax.Array:
    """u^1_t = E[x_t] for tokens [...] -> [..., H]; stop-gradded unless embedding "learned"."""
    table = params["embed"]
    if as_config(arch).embedding == "frozen":
        table = jax.lax.stop_gradient(table)
    return table[tokens]


def target_embedding(params: dict, tokens: jax.Array, arch: Config | str = "none") -> jax.Array:
    """The denoising target's mean for next bytes tokens [...] -> [..., H], stop-gradded:
    E[x_{t+1}] (frozen E) or E[x_{t+1}] / ||E[x_{t+1}]|| (learned E)."""
    rows = jax.lax.stop_gradient(params["embed"])[tokens]
    if as_config(arch).embedding == "learned":
        rows = rows / jnp.linalg.norm(rows, axis=-1, keepdims=True)
    return rows


def lru_scan(layer: dict, n: jax.Array, s_init: jax.Array | None = None) -> jax.Array:
    """All states of one layer by a parallel associative scan over time.

    Args:
      layer: one layer's parameters.
      n: (normalised) inputs n_t [B, T, H].
      s_init: state s_{-1} before the first input, complex [B, N] (zeros if None).
    Returns:
      s: complex states [B, T, N], s_t = λ s_{t-1} + γ ⊙ (B n_t).
    """
    lam = eigenvalues(layer)
    bu = input_projection(layer, n)
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
    arch: Config | str = "none",
):
    """Runs the residual stack on input bytes.

    Args:
      params: see module docstring.
      inputs: int tokens x_t [B, T].
      local: if True, the inputs u^ℓ of layers ℓ ≥ 2 are stop-gradded, so autodiff of layer ℓ's
        loss reaches θ^ℓ only (the local objective; layer 1's input E[x_t] carries a gradient to
        E only if the embedding is learned); if False, gradients flow through depth (BPTT).
      s_init: optional per-layer initial states, complex [B, N] each.
      arch: the architecture (a Config, or Config.activation for the post's block).
    Returns:
      ys: per-layer outputs y^ℓ [B, T, H]; us: per-layer inputs u^ℓ [B, T, H];
      s_last: per-layer final states s^ℓ_{T-1}, complex [B, N].
    """
    cfg = as_config(arch)
    u = embed(params, inputs, cfg)
    ys, us, s_last = [], [], []
    for ell, layer in enumerate(params["layers"]):
        u_in = jax.lax.stop_gradient(u) if local and ell > 0 else u
        s = lru_scan(layer, layer_input(u_in, cfg), None if s_init is None else s_init[ell])
        y = layer_output(layer, s, u_in, cfg)
        ys.append(y)
        us.append(u_in)
        s_last.append(s[:, -1])
        u = u_in + y
    return ys, us, s_last


def top_features(ys: list, us: list, arch: Config | str = "none") -> jax.Array:
    """The decoder's input h^L_t [B, T, H] from stack_forward's ys and us."""
    return head_features(us[-1], ys[-1], arch)


def logits(params: dict, tokens: jax.Array, arch: Config | str = "none") -> jax.Array:
    """Next-byte logits: tokens int [B, T] -> logits [B, T-1, V] predicting tokens[:, 1:]."""
    ys, us, _ = stack_forward(params, tokens[:, :-1], local=False, arch=arch)
    return top_features(ys, us, arch) @ params["decoder"]["W"] + params["decoder"]["b"]
