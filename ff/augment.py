"""Training augmentation of paper §4.2 as pure JAX functions of a key, on float images
x [B, H, W, C] in [0, 1]:

    random_crop   zero-pad by `pad` on each side, crop back to H×W at a uniform offset
    random_flip   horizontal flip with probability 1/2
    colour_jitter brightness, contrast and (C = 3) saturation factors ~ U[1 − s, 1 + s]
                  (torchvision's ColorJitter(0.4, 0.4, 0.4) without hue: the paper gives no
                  strengths; ours), applied in that order, clipped to [0, 1]
    cutout        one size×size square zeroed, centre uniform over the image, clipped at the
                  borders (DeVries & Taylor 2017)

`scaled(side)` sizes them for other inputs: pad = round(4 · side / 32) and cutout =
round(16 · side / 32), so a 28×28 Fashion-MNIST image gets pad 4 (3.5, rounded half to even) and
a 14×14 Cutout, the 32×32 recipe scaled by 28/32; saturation needs colour and is skipped for
C = 1. If a 28×28 image is padded to the 32 grid for VGG8 (`pad_to`), augment at 32 instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AugmentConfig(NamedTuple):
    pad: int = 4
    flip: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    cutout: int = 16


def scaled(side: int, **overrides) -> AugmentConfig:
    """The 32×32 recipe scaled to a side×side input (see the module docstring)."""
    if side < 1:
        raise ValueError(f"image side must be >= 1; got {side}")
    return AugmentConfig(pad=round(4 * side / 32), cutout=round(16 * side / 32))._replace(
        **overrides
    )


def _check(x):
    if x.ndim != 4:
        raise ValueError(f"augmentation takes images [B, H, W, C]; got shape {x.shape}")


def pad_to(x: jax.Array, side: int) -> jax.Array:
    """Zero-pad [B, H, W, C] symmetrically to side×side (28 → 32 puts 2 pixels each side)."""
    _check(x)
    H, W = x.shape[1:3]
    if max(H, W) > side:
        raise ValueError(f"cannot pad {H}×{W} to a smaller {side}×{side}")
    top, left = (side - H) // 2, (side - W) // 2
    return jnp.pad(x, ((0, 0), (top, side - H - top), (left, side - W - left), (0, 0)))


def random_crop(key, x: jax.Array, pad: int) -> jax.Array:
    _check(x)
    if pad == 0:
        return x
    B, H, W, C = x.shape
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(key, (B, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (H, W, C))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key, x: jax.Array) -> jax.Array:
    _check(x)
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1], x)


def _factors(key, strength, B, dtype):
    return jax.random.uniform(key, (B, 1, 1, 1), dtype, 1.0 - strength, 1.0 + strength)


def colour_jitter(key, x: jax.Array, brightness=0.4, contrast=0.4, saturation=0.4) -> jax.Array:
    _check(x)
    B, C = x.shape[0], x.shape[-1]
    kb, kc, ks = jax.random.split(key, 3)
    x = jnp.clip(x * _factors(kb, brightness, B, x.dtype), 0.0, 1.0)
    grey = x @ jnp.asarray([0.299, 0.587, 0.114], x.dtype)[:, None] if C == 3 else x.mean(-1, True)
    mean = jnp.mean(grey, axis=(1, 2, 3), keepdims=True)
    c = _factors(kc, contrast, B, x.dtype)
    x = jnp.clip(c * x + (1.0 - c) * mean, 0.0, 1.0)
    if C == 3 and saturation:
        grey = x @ jnp.asarray([0.299, 0.587, 0.114], x.dtype)[:, None]
        s = _factors(ks, saturation, B, x.dtype)
        x = jnp.clip(s * x + (1.0 - s) * grey, 0.0, 1.0)
    return x


def cutout(key, x: jax.Array, size: int) -> jax.Array:
    _check(x)
    if size == 0:
        return x
    B, H, W, _ = x.shape
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (B, 1, 1, 1), 0, H)
    cx = jax.random.randint(kx, (B, 1, 1, 1), 0, W)
    rows = jnp.arange(H)[None, :, None, None]
    cols = jnp.arange(W)[None, None, :, None]
    lo = size // 2
    in_rows = (rows >= cy - lo) & (rows < cy - lo + size)
    inside = in_rows & (cols >= cx - lo) & (cols < cx - lo + size)
    return jnp.where(inside, 0.0, x).astype(x.dtype)


def augment(key, x: jax.Array, config: AugmentConfig | None = None) -> jax.Array:
    """crop → flip → colour jitter → cutout, each from its own fold of `key` (default config:
    the 32×32 recipe)."""
    config = AugmentConfig() if config is None else config
    k = [jax.random.fold_in(key, i) for i in range(4)]
    x = random_crop(k[0], x, config.pad)
    if config.flip:
        x = random_flip(k[1], x)
    x = colour_jitter(k[2], x, config.brightness, config.contrast, config.saturation)
    return cutout(k[3], x, config.cutout)
