"""Goodness, temperature, margin and the two local losses of DTG-FF (paper §4.1, App. A.1–A.5).

    u_l = φ_l(z_l)                                    the goodness representation, Eq. (1)
        φ^MLP(z) = ‖z‖² / d_l                         scalar (`mean_square_goodness`)
        φ^CNN(z) = flatten(AdaptiveAvgPool(z², (h_l, w_l)))   vector (`spatial_goodness`)
        u = z²                                        the synthetic students' vector (App. E)
    T_l = T_min + (T_max − T_min) σ(α_l)              Eq. (2) (`temperature`)
    θ_l = softplus(θ_{0,l})                           the MLP margin (`margin`)
    L_l^MLP = −log σ(g⁺/T − θ) − log σ(θ − g⁻/T)       Eq. (8) (`margin_loss`)
    ψ_l^CNN = (u_l / T_l)ᵀ R_l + b_l,  L_l = CE(ψ, y)   Eq. (7) (`readout_logits`, `cross_entropy`)
    R_l, b_l ~ N(0, 1/K), fixed                        (`random_readout`)

The MLP additions of App. A.2: the label overlay (the first K inputs ← λ e_y, `overlay_label`),
negatives with a label drawn uniformly among the K − 1 *other* labels (`negative_labels`) and
the warm start of θ_0 from the first batch's mean goodness ḡ (`warm_start_theta0`):
θ_0 ← ḡ if ḡ > 20 (softplus is the identity to 2e-9 there), else θ_0 ← log(exp(ḡ) − 1), the
inverse softplus, so that θ = softplus(θ_0) = ḡ in both branches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WARM_START_IDENTITY_ABOVE = 20.0


def temperature(alpha: jax.Array, t_min: float, t_max: float) -> jax.Array:
    """T = T_min + (T_max − T_min) σ(α), in [T_min, T_max] for every finite α (shape of α)."""
    if not 0 < t_min <= t_max:
        raise ValueError(f"the temperature range needs 0 < t_min <= t_max; got [{t_min}, {t_max}]")
    return t_min + (t_max - t_min) * jax.nn.sigmoid(alpha)


def margin(theta0: jax.Array) -> jax.Array:
    """θ = softplus(θ_0) > 0."""
    return jax.nn.softplus(theta0)


def warm_start_theta0(mean_goodness: jax.Array) -> jax.Array:
    """θ_0 with softplus(θ_0) = ḡ: ḡ itself if ḡ > 20, else log(exp(ḡ) − 1) (needs ḡ > 0)."""
    g = jnp.asarray(mean_goodness)
    safe = jnp.where(g > WARM_START_IDENTITY_ABOVE, 1.0, g)
    return jnp.where(g > WARM_START_IDENTITY_ABOVE, g, jnp.log(jnp.expm1(safe)))


def mean_square_goodness(z: jax.Array) -> jax.Array:
    """g = ‖z‖² / d over the last axis: z [B, d] -> [B]."""
    return jnp.mean(jnp.square(z), axis=-1)


def square_goodness(z: jax.Array) -> jax.Array:
    """u = z² elementwise, flattened per sample: z [B, ...] -> [B, m]."""
    return jnp.square(z).reshape(z.shape[0], -1)


def _adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
    # PyTorch's AdaptiveAvgPool bins: [floor(i n / out), ceil((i + 1) n / out))
    return [((i * n) // out, -((-(i + 1) * n) // out)) for i in range(out)]


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """AdaptiveAvgPool2d over the spatial axes: x [B, H, W, C] -> [B, h, w, C] (PyTorch's bins,
    overlapping where h does not divide H)."""
    B, H, W, C = x.shape
    h, w = size
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"goodness pool {size} must lie within the map {H}×{W}; shrink it")
    rows = jnp.stack([jnp.mean(x[:, a:b], axis=1) for a, b in _adaptive_bins(H, h)], axis=1)
    return jnp.stack([jnp.mean(rows[:, :, a:b], axis=2) for a, b in _adaptive_bins(W, w)], axis=2)


def spatial_goodness(z: jax.Array, size: tuple[int, int]) -> jax.Array:
    """u = flatten(AdaptiveAvgPool(z², (h, w))): z [B, H, W, C] -> [B, h·w·C] (flattened in
    (h, w, C) order; the readout R is random, so the order is immaterial)."""
    pooled = adaptive_avg_pool(jnp.square(z), size)
    return pooled.reshape(z.shape[0], -1)


def margin_loss(g_pos: jax.Array, g_neg: jax.Array, T: jax.Array, theta: jax.Array) -> jax.Array:
    """mean_b [−log σ(g⁺_b/T − θ) − log σ(θ − g⁻_b/T)], Eq. (8); g± [B] -> []."""
    return jnp.mean(jax.nn.softplus(theta - g_pos / T) + jax.nn.softplus(g_neg / T - theta))


def random_readout(key, m: int, classes: int, dtype=jnp.float32, normalise: bool = False) -> dict:
    """Fixed R [m, K], b [K] ~ N(0, 1/K). normalise=True: the columns r_k of R scaled to unit
    norm (the scale-confound ablation of App. A.5, R̃_l); b is unchanged."""
    kr, kb = jax.random.split(key)
    scale = 1.0 / jnp.sqrt(jnp.asarray(classes, dtype))
    R = jax.random.normal(kr, (m, classes), dtype) * scale
    if normalise:
        R = R / jnp.linalg.norm(R, axis=0, keepdims=True)
    return {"R": R, "b": jax.random.normal(kb, (classes,), dtype) * scale}


def readout_logits(u: jax.Array, T: jax.Array, readout: dict) -> jax.Array:
    """ψ = (u / T)ᵀ R + b: u [B, m] -> [B, K]."""
    return (u / T) @ readout["R"] + readout["b"]


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    """mean_b CE(logits_b, y_b) with label smoothing ε (target (1 − ε) e_y + ε / K)."""
    K = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = jax.nn.one_hot(labels, K, dtype=logits.dtype)
    if smoothing:
        target = (1.0 - smoothing) * target + smoothing / K
    return -jnp.mean(jnp.sum(target * logp, axis=-1))


def overlay_label(x: jax.Array, labels: jax.Array, classes: int, lam: float = 1.0) -> jax.Array:
    """x [B, D] with its first K entries overwritten by λ e_y (labels [B] int) -> [B, D]."""
    if x.ndim != 2 or x.shape[1] < classes:
        raise ValueError(
            f"the label overlay writes the first K = {classes} inputs of flat samples [B, D]; "
            f"got shape {x.shape}: flatten the images and use D >= K"
        )
    onehot = lam * jax.nn.one_hot(labels, classes, dtype=x.dtype)
    return x.at[:, :classes].set(onehot)


def overlay_neutral(x: jax.Array, classes: int, lam: float = 1.0) -> jax.Array:
    """x with its first K entries ← λ / K each (Hinton's neutral label, for passes without y)."""
    return x.at[:, :classes].set(jnp.full((x.shape[0], classes), lam / classes, x.dtype))


def negative_labels(key, labels: jax.Array, classes: int) -> jax.Array:
    """y⁻ ~ uniform over {0, …, K−1} \\ {y}: (y + s) mod K with s ~ uniform{1, …, K−1}."""
    if classes < 2:
        raise ValueError(f"negative labels need K >= 2 classes; got {classes}")
    shift = jax.random.randint(key, labels.shape, 1, classes, dtype=labels.dtype)
    return (labels + shift) % classes
