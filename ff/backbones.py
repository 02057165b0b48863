"""The layer stacks every ff model is built on: one interface, so DTG-FF, BP, BP-DeepSup and the
BP ensemble share a backbone exactly.

    x_0 = prepare(x)                               flatten (Dense) or NHWC as given (VGG)
    z_l = layer(l, params_l, x̂_{l−1})              ReLU(W_l x̂_{l−1} + b_l), post-ReLU
    x̂_l = propagate(l, z_l, key, train)            pool → channel LayerNorm → dropout (per config)
    u_l = goodness(l, z_l)   [B, m_l]              z² (Dense, App. E) / AdaptiveAvgPool(z², (h, w))
    f_l = features(l, z_l)   [B, C_l]              z (Dense) / global average pool (VGG)

A rule decides what crosses layers: DTG-FF stop-gradients x̂_l, BP does not. Layer parameters are
dicts {"W", "b"}; W, b ~ U(−1/√fan_in, 1/√fan_in) (PyTorch's nn.Linear / nn.Conv2d default, which
App. E's parameter counts assume: every layer carries a bias).

- Dense(d_in, widths): the synthetic students' 4 × 128 stack (App. E) and the MLP instance.
- VGG(in_channels, widths, pool_after, image): 3×3 SAME convolutions; 2×2 average pool after the
  0-based layers in `pool_after` (VGG8: 3→128→256→256→512→512→512→512, pools after 1, 3, 4, 5,
  so 32×32 → 16 → 8 → 4 → 2 and layer 0 keeps full resolution, as App. D.5 says). The pool sits in
  the propagation path before the LayerNorm (our reading: the paper gives the pools and the
  norm, not their order), so goodness and features of layer l see its full-resolution map.
  Channel LayerNorm is non-affine (the paper's affine parameters never receive gradient).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ff import goodness as gd

LN_EPS = 1e-5


def _uniform_layer(key, w_shape, fan_in, dtype):
    kw, kb = jax.random.split(key)
    bound = 1.0 / jnp.sqrt(jnp.asarray(fan_in, dtype))
    return {
        "W": jax.random.uniform(kw, w_shape, dtype, -bound, bound),
        "b": jax.random.uniform(kb, (w_shape[-1],), dtype, -bound, bound),
    }


def channel_layer_norm(x: jax.Array) -> jax.Array:
    """(x − mean_C) / √(var_C + 1e-5) over the last (channel) axis, per sample and location."""
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + LN_EPS)


def dropout(key, x: jax.Array, rate: float, train: bool) -> jax.Array:
    """Inverted dropout: x · m / (1 − rate), m ~ Bernoulli(1 − rate); identity when not training."""
    if not train or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def avg_pool2(x: jax.Array) -> jax.Array:
    """2×2 average pool, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
    B, H, W, C = x.shape
    if H % 2 or W % 2:
        raise ValueError(f"a 2×2 pool needs an even map; got {H}×{W}: drop that pool_after entry")
    return jnp.mean(x.reshape(B, H // 2, 2, W // 2, 2, C), axis=(2, 4))


def _check_rate(name, rate):
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must lie in [0, 1); got {rate}")


@dataclasses.dataclass(frozen=True)
class Dense:
    """z_l = ReLU(x̂_{l−1} W_l + b_l), W_l [d_{l−1}, d_l]; u_l = z_l², f_l = z_l."""

    d_in: int
    widths: tuple = (128, 128, 128, 128)
    interlayer_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if not self.widths or min(self.widths) < 1 or self.d_in < 1:
            raise ValueError(
                f"Dense needs d_in >= 1 and widths >= 1; got {self.d_in}, {self.widths}"
            )
        _check_rate("dropout", self.dropout)

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def input_shape(self) -> tuple:
        return (self.d_in,)

    def init(self, key, dtype=jnp.float32) -> list:
        keys = jax.random.split(key, self.depth)
        sizes = (self.d_in, *self.widths)
        return [
            _uniform_layer(k, (sizes[l], sizes[l + 1]), sizes[l], dtype) for l, k in enumerate(keys)
        ]

    def prepare(self, x):
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.d_in:
            raise ValueError(f"Dense expects {self.d_in} inputs per sample; got {x.shape[1]}")
        return x

    def layer(self, l, layer_params, x):
        return jax.nn.relu(x @ layer_params["W"] + layer_params["b"])

    def propagate(self, l, z, key, train):
        h = channel_layer_norm(z) if self.interlayer_norm else z
        return dropout(key, h, self.dropout, train)

    def goodness(self, l, z):
        return gd.square_goodness(z)

    def features(self, l, z):
        return z

    def goodness_dim(self, l) -> int:
        return self.widths[l]

    def feature_dim(self, l) -> int:
        return self.widths[l]


@dataclasses.dataclass(frozen=True)
class VGG:
    """z_l = ReLU(conv3×3(x̂_{l−1}, W_l) + b_l), W_l [3, 3, C_{l−1}, C_l] (NHWC);
    u_l = flatten(AdaptiveAvgPool(z_l², goodness_pool)), f_l = GAP(z_l)."""

    in_channels: int = 3
    widths: tuple = (128, 256, 256, 512, 512, 512, 512)
    pool_after: tuple = (1, 3, 4, 5)
    image: tuple = (32, 32)
    goodness_pool: tuple = (2, 2)
    interlayer_norm: bool = True
    dropout: float = 0.1

    def __post_init__(self):
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"VGG needs at least one layer of width >= 1; got {self.widths}")
        bad = [l for l in self.pool_after if not 0 <= l < len(self.widths)]
        if bad:
            raise ValueError(f"pool_after {bad} name no layer of {len(self.widths)}")
        _check_rate("dropout", self.dropout)
        for l in range(self.depth):
            H, W = self.map_size(l)
            if self.goodness_pool[0] > H or self.goodness_pool[1] > W:
                raise ValueError(
                    f"layer {l}'s map is {H}×{W}, smaller than goodness_pool "
                    f"{self.goodness_pool}: shrink goodness_pool or drop a pool"
                )
            if l in self.pool_after and (H % 2 or W % 2):
                raise ValueError(f"layer {l} pools an odd map {H}×{W}: drop it from pool_after")

    @property
    def depth(self) -> int:
        return len(self.widths)

    @property
    def input_shape(self) -> tuple:
        return (*self.image, self.in_channels)

    def map_size(self, l) -> tuple:
        """(H, W) of z_l."""
        H, W = self.image
        for k in range(l):
            if k in self.pool_after:
                H, W = H // 2, W // 2
        return H, W

    def init(self, key, dtype=jnp.float32) -> list:
        keys = jax.random.split(key, self.depth)
        sizes = (self.in_channels, *self.widths)
        return [
            _uniform_layer(k, (3, 3, sizes[l], sizes[l + 1]), 9 * sizes[l], dtype)
            for l, k in enumerate(keys)
        ]

    def prepare(self, x):
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"VGG expects images [B, {', '.join(map(str, self.input_shape))}] (NHWC); "
                f"got {x.shape}: set image=/in_channels= to the data"
            )
        return x

    def layer(self, l, layer_params, x):
        y = jax.lax.conv_general_dilated(
            x, layer_params["W"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jax.nn.relu(y + layer_params["b"])

    def propagate(self, l, z, key, train):
        h = avg_pool2(z) if l in self.pool_after else z
        if self.interlayer_norm:
            h = channel_layer_norm(h)
        return dropout(key, h, self.dropout, train)

    def goodness(self, l, z):
        return gd.spatial_goodness(z, self.goodness_pool)

    def features(self, l, z):
        return jnp.mean(z, axis=(1, 2))

    def goodness_dim(self, l) -> int:
        return self.goodness_pool[0] * self.goodness_pool[1] * self.widths[l]

    def feature_dim(self, l) -> int:
        return self.widths[l]


def vgg8(in_channels: int = 3, image=(32, 32), width_scale: float = 1.0, **options) -> VGG:
    """The paper's VGG8 (§4.2); width_scale < 1 shrinks every width (CPU presets, tests)."""
    widths = tuple(max(1, round(w * width_scale)) for w in (128, 256, 256, 512, 512, 512, 512))
    return VGG(in_channels=in_channels, widths=widths, image=tuple(image), **options)


def count(params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(params))
