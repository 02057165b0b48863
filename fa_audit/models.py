"""Models the audit protocol reads: each exposes its embedding, blocks, residual states h_l,
terminal norm and head, so any credit method and diagnostic can be applied to it.

ResidualMLP (the paper's 4-block d = 256 pre-LN ResidualMLP; the block's inner form is not given,
ours is a one-hidden-layer GELU MLP of width d):

    h_0 = W_e x + b_e                                                     embedding  [B, d]
    f_l(h) = W_2,l GELU(W_1,l LN(h) + b_1,l) + b_2,l,   h_{l+1} = h_l + f_l(h_l)   l = 0..L−1
    logits = W_o LN_T(h_L) + b_o                                          terminal LN, head

LN is parameter-free (x − mean) / sqrt(var + 1e-5) over the features (non-affine; the terminal
LN is the same map, `terminal_norm=False` removes it: StudentNet-style). Parameters: a dict
{"embed": {W, b}, "blocks": [{W1, b1, W2, b2}] * L, "head": {W, b}}; W ~ N(0, 1/fan_in).
"""

from __future__ import annotations

from typing import NamedTuple

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


class ResidualMLP(NamedTuple):
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
        return x @ params["embed"]["W"] + params["embed"]["b"]

    def block(self, block_params, h):
        """f_l(h), the block's residual branch."""
        z = jax.nn.gelu(layer_norm(h) @ block_params["W1"] + block_params["b1"])
        return z @ block_params["W2"] + block_params["b2"]

    def readout(self, params, h_L):
        """logits from the last residual state through the terminal norm and the head."""
        h = layer_norm(h_L) if self.terminal_norm else h_L
        return h @ params["head"]["W"] + params["head"]["b"]

    def forward(self, params, x):
        """(logits [B, K], residual states [h_0, …, h_L], block outputs [f_0, …, f_{L−1}])."""
        h = self.embed(params, x)
        hidden, branches = [h], []
        for block_params in params["blocks"]:
            f = self.block(block_params, h)
            h = h + f
            hidden.append(h)
            branches.append(f)
        return self.readout(params, h), hidden, branches


def cross_entropy(logits, labels) -> jax.Array:
    """Mean softmax cross-entropy over the batch; labels [B] int."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
