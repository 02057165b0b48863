"""Models the audit protocol reads. Every model exposes the same pieces, so any credit method and
diagnostic applies to it:

    h_0 = embed(params, x)                      the embedding's output
    h_{l+1} = next_state(l, params_l, h_l)      h_l + f_l(h_l) if residual, else f_l(h_l)
    logits = readout(params, h_L)               terminal norm (if any) and head
    forward(params, x) -> (logits, [h_0, …, h_L], [f_0, …, f_{L−1}])
    features(h) -> [B, F]                       a per-sample vector summary of a state
    input_shape                                 one sample's shape

Parameters are dicts {"embed": …, "blocks": [… per block], "head": {W, b}}; dense
W ~ N(0, 1/fan_in).
`terminal_norm` says whether a LayerNorm sits between h_L and the head (diagnostic (b)'s case).

- ResidualMLP (the paper's 4-block d = 256 pre-LN ResidualMLP; its block's inner form is not
  given, ours is a one-hidden-layer GELU MLP of width d):
      h_0 = x W_e + b_e,   f_l(h) = GELU(LN(h) W_1 + b_1) W_2 + b_2,   logits = LN_T(h_L) W_o + b_o
  `terminal_norm=False` removes LN_T: that is StudentNet (`student_net`), trained on a synthetic
  teacher (`fa_audit.tasks.teacher`).
- ViTMini (4 pre-LN transformer blocks on p×p patches; sizes are ours, the paper gives none):
      h_0 = patches(x) W_e + b_e + P  [B, T, d]
      f_l(h) = a + MLP(LN(h + a)),  a = MHSA(LN(h))   (so h_{l+1} = h + a + MLP(LN(h + a)))
      logits = mean_T LN_T(h_L) W_o + b_o
- SmallCNN (no terminal LN, no residual): h_0 = x, block l = 3×3 conv (SAME) → BatchNorm (batch
  statistics, affine) → ReLU → 2×2 average pool where `pool[l]`; logits = GAP(h_L) W_o + b_o.
  BatchNorm uses the batch's statistics in training and evaluation alike (no running averages:
  evaluation batches are large), so a model stays a pure function of (params, x).

LN is parameter-free (x − mean) / sqrt(var + 1e-5) over the last axis.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

EPS = 1e-5


def layer_norm(h: jax.Array) -> jax.Array:
    mu = jnp.mean(h, axis=-1, keepdims=True)
    return (h - mu) / jnp.sqrt(jnp.mean((h - mu) ** 2, axis=-1, keepdims=True) + EPS)


def _dense(key, n_in, n_out, dtype):
    return {
        "W": jax.random.normal(key, (n_in, n_out), dtype) / jnp.sqrt(jnp.asarray(n_in, dtype)),
        "b": jnp.zeros((n_out,), dtype),
    }


class _Model:
    """The shared forward pass over embed / block / readout (`block(l, params_l, h)`: l is the
    block's static index)."""

    residual = True

    def advance(self, h, f):
        """h_{l+1} from h_l and the block's output f_l."""
        return h + f if self.residual else f

    def next_state(self, l, block_params, h):
        return self.advance(h, self.block(l, block_params, h))

    def forward(self, params, x):
        """(logits [B, K], residual states [h_0, …, h_L], block outputs [f_0, …, f_{L−1}])."""
        h = self.embed(params, x)
        hidden, branches = [h], []
        for l, block_params in enumerate(params["blocks"]):
            f = self.block(l, block_params, h)
            h = self.advance(h, f)
            hidden.append(h)
            branches.append(f)
        return self.readout(params, h), hidden, branches


@dataclasses.dataclass(frozen=True)
class ResidualMLP(_Model):
    d_in: int
    d: int = 256
    blocks: int = 4
    classes: int = 10
    terminal_norm: bool = True

    def init(self, key, dtype=jnp.float32) -> dict:
        keys = jax.random.split(key, 2 * self.blocks + 2)
        blocks = []
        for l in range(self.blocks):
            one, two = (
                _dense(keys[2 * l], self.d, self.d, dtype),
                _dense(keys[2 * l + 1], self.d, self.d, dtype),
            )
            blocks.append({"W1": one["W"], "b1": one["b"], "W2": two["W"], "b2": two["b"]})
        return {
            "embed": _dense(keys[-2], self.d_in, self.d, dtype),
            "blocks": blocks,
            "head": _dense(keys[-1], self.d, self.classes, dtype),
        }

    def embed(self, params, x):
        x = x.reshape(x.shape[0], -1)
        return x @ params["embed"]["W"] + params["embed"]["b"]

    def block(self, l, block_params, h):
        """f_l(h), the block's residual branch."""
        z = jax.nn.gelu(layer_norm(h) @ block_params["W1"] + block_params["b1"])
        return z @ block_params["W2"] + block_params["b2"]

    def readout(self, params, h_L):
        """logits from the last residual state through the terminal norm and the head."""
        h = layer_norm(h_L) if self.terminal_norm else h_L
        return h @ params["head"]["W"] + params["head"]["b"]

    def features(self, h):
        return h

    @property
    def input_shape(self) -> tuple:
        return (self.d_in,)


def student_net(d_in: int, d: int = 256, blocks: int = 4, classes: int = 10) -> ResidualMLP:
    """StudentNet: the ResidualMLP without a terminal LayerNorm."""
    return ResidualMLP(d_in=d_in, d=d, blocks=blocks, classes=classes, terminal_norm=False)


@dataclasses.dataclass(frozen=True)
class ViTMini(_Model):
    image: tuple  # (H, W, C)
    patch: int = 4
    d: int = 64
    heads: int = 4
    mlp: int = 128
    blocks: int = 4
    classes: int = 10
    terminal_norm: bool = True

    @property
    def tokens(self) -> int:
        H, W, _ = self.image
        if H % self.patch or W % self.patch:
            raise ValueError(f"patch {self.patch} does not divide the image {self.image}")
        return (H // self.patch) * (W // self.patch)

    def init(self, key, dtype=jnp.float32) -> dict:
        if self.d % self.heads:
            raise ValueError(f"d = {self.d} is not a multiple of heads = {self.heads}")
        keys = jax.random.split(key, 6 * self.blocks + 3)
        embed = _dense(keys[-3], self.patch * self.patch * self.image[2], self.d, dtype)
        embed["P"] = 0.02 * jax.random.normal(keys[-2], (self.tokens, self.d), dtype)
        blocks = []
        for l in range(self.blocks):
            k = keys[6 * l : 6 * l + 6]
            names = ("q", "k", "v", "o")
            block = {n: _dense(k[i], self.d, self.d, dtype) for i, n in enumerate(names)}
            block["fc1"] = _dense(k[4], self.d, self.mlp, dtype)
            block["fc2"] = _dense(k[5], self.mlp, self.d, dtype)
            blocks.append(block)
        return {
            "embed": embed,
            "blocks": blocks,
            "head": _dense(keys[-1], self.d, self.classes, dtype),
        }

    def embed(self, params, x):
        """x [B, H, W, C] -> h_0 [B, T, d]."""
        B, H, W, C = x.shape
        p = self.patch
        patches = x.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(B, self.tokens, p * p * C)
        e = params["embed"]
        return patches @ e["W"] + e["b"] + e["P"]

    def _attention(self, bp, h):
        B, T, d = h.shape
        dh = d // self.heads

        def heads(name):
            return (h @ bp[name]["W"] + bp[name]["b"]).reshape(B, T, self.heads, dh)

        q, k, v = heads("q"), heads("k"), heads("v")
        weights = jax.nn.softmax(jnp.einsum("bqhe,bkhe->bhqk", q, k) / jnp.sqrt(dh), axis=-1)
        mixed = jnp.einsum("bhqk,bkhe->bqhe", weights, v).reshape(B, T, d)
        return mixed @ bp["o"]["W"] + bp["o"]["b"]

    def block(self, l, block_params, h):
        a = self._attention(block_params, layer_norm(h))
        z = jax.nn.gelu(layer_norm(h + a) @ block_params["fc1"]["W"] + block_params["fc1"]["b"])
        return a + z @ block_params["fc2"]["W"] + block_params["fc2"]["b"]

    def readout(self, params, h_L):
        h = layer_norm(h_L) if self.terminal_norm else h_L
        return jnp.mean(h, axis=1) @ params["head"]["W"] + params["head"]["b"]

    def features(self, h):
        return jnp.mean(h, axis=1)

    @property
    def input_shape(self) -> tuple:
        return tuple(self.image)


@dataclasses.dataclass(frozen=True)
class SmallCNN(_Model):
    image: tuple = (28, 28, 1)
    channels: tuple = (16, 32, 32, 32)
    pool: tuple = (True, True, False, False)
    classes: int = 10
    terminal_norm: bool = False
    residual = False

    def init(self, key, dtype=jnp.float32) -> dict:
        if len(self.pool) != len(self.channels):
            raise ValueError(f"pool {self.pool} needs one entry per block {self.channels}")
        keys = jax.random.split(key, len(self.channels) + 1)
        blocks, c_in = [], self.image[2]
        for k, c in zip(keys[:-1], self.channels, strict=True):
            fan = 9 * c_in
            W = jax.random.normal(k, (3, 3, c_in, c), dtype) * jnp.sqrt(
                jnp.asarray(2.0 / fan, dtype)
            )
            blocks.append({"W": W, "gamma": jnp.ones((c,), dtype), "beta": jnp.zeros((c,), dtype)})
            c_in = c
        return {"embed": {}, "blocks": blocks, "head": _dense(keys[-1], c_in, self.classes, dtype)}

    def embed(self, params, x):
        return x

    def block(self, l, block_params, h):
        """conv → BatchNorm (batch statistics) → ReLU → 2×2 average pool if pool[l]."""
        z = jax.lax.conv_general_dilated(
            h, block_params["W"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        mu = jnp.mean(z, axis=(0, 1, 2))
        var = jnp.mean((z - mu) ** 2, axis=(0, 1, 2))
        z = (z - mu) / jnp.sqrt(var + EPS) * block_params["gamma"] + block_params["beta"]
        z = jax.nn.relu(z)
        if not self.pool[l]:
            return z
        B, H, W, C = z.shape
        if H % 2 or W % 2:
            raise ValueError(f"block {l} pools an odd map {H}×{W}; set pool[{l}] = False")
        return z.reshape(B, H // 2, 2, W // 2, 2, C).mean(axis=(2, 4))

    def readout(self, params, h_L):
        return self.features(h_L) @ params["head"]["W"] + params["head"]["b"]

    def features(self, h):
        return jnp.mean(h, axis=(1, 2))

    @property
    def input_shape(self) -> tuple:
        return tuple(self.image)


def cross_entropy(logits, labels) -> jax.Array:
    """Mean softmax cross-entropy over the batch; labels [B] int."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def accuracy(logits, labels) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
