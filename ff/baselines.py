"""Backprop baselines on the DTG-FF backbones (paper §5.2, App. D.7, App. E).

The same backbone as DTG-FF (same layers, pools, channel LayerNorm and dropout in the
propagation path) with no stop-gradient between layers:
    z_l = layer_l(x̂_{l−1}),  x̂_l = propagate_l(z_l),  f_l = features_l(z_l)
- head="single" (BP): logits = f_{L−1} W + b, loss CE(logits, y).
- head="deepsup" (BP-DeepSup): a learned linear head per layer, c_l = f_l W_l + b_l, loss
  Σ_l CE(c_l, y), inference Σ_l c_l (logit-sum). It differs from DTG-FF only in the detach, the
  objective (CE on f_l vs CE on goodness) and the head (learned vs fixed random).
- checkpoint=True: each layer (conv/dense → ReLU → propagate) under `jax.checkpoint`, so its
  activations are recomputed in the backward pass (BP + activation checkpointing); gradients
  are BP's exactly.
- `Ensemble(net, members=4)` (BP-Ensemble): independent members {"members": [params …]}, loss the
  sum of the members' losses (their gradients are each member's own), inference the average of
  the members' softmax; `logits` returns its log.
Gradient accumulation is a rule option (`ff.rules.bp_accumulate`), not a model.

Parameters: {"layers": [{"W", "b"} …], "heads": [{"W", "b"} …]} (one head, or one per layer).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ff import goodness as gd
from ff.backbones import _uniform_layer

HEADS = ("single", "deepsup")


@dataclasses.dataclass(frozen=True)
class BPNet:
    backbone: object
    classes: int
    head: str = "single"
    checkpoint: bool = False
    label_smoothing: float = 0.0

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}; got {self.head!r}")
        if self.classes < 2:
            raise ValueError(f"a classifier needs K >= 2 classes; got {self.classes}")

    @property
    def depth(self) -> int:
        return self.backbone.depth

    @property
    def head_layers(self) -> tuple:
        return tuple(range(self.depth)) if self.head == "deepsup" else (self.depth - 1,)

    def init(self, key, dtype=jnp.float32) -> dict:
        kb, kh = jax.random.split(key)
        keys = jax.random.split(kh, len(self.head_layers))
        heads = []
        for k, l in zip(keys, self.head_layers, strict=True):
            F = self.backbone.feature_dim(l)
            heads.append(_uniform_layer(k, (F, self.classes), F, dtype))
        return {"layers": self.backbone.init(kb, dtype), "heads": heads}

    def head_logits(self, params, x, key, train):
        """[c_l [B, K] for each head layer] (one for "single")."""
        x_hat = self.backbone.prepare(x)
        out = []
        for l in range(self.depth):

            def block(layer_params, x_in, k, l=l):
                z = self.backbone.layer(l, layer_params, x_in)
                return z, self.backbone.propagate(l, z, k, train)

            if self.checkpoint:
                block = jax.checkpoint(block)
            z, x_hat = block(params["layers"][l], x_hat, jax.random.fold_in(key, l))
            if l in self.head_layers:
                h = params["heads"][self.head_layers.index(l)]
                out.append(self.backbone.features(l, z) @ h["W"] + h["b"])
        return out

    def loss(self, params, x, labels, key):
        """CE (single) or Σ_l CE_l (deepsup), dropout on."""
        logits = self.head_logits(params, x, key, True)
        return sum(gd.cross_entropy(c, labels, self.label_smoothing) for c in logits)

    def logits(self, params, x):
        """[B, K]: the head (single) or Σ_l c_l (deepsup); dropout off."""
        return sum(self.head_logits(params, x, jax.random.key(0), False))


@dataclasses.dataclass(frozen=True)
class Ensemble:
    net: BPNet
    members: int = 4

    def __post_init__(self):
        if self.members < 1:
            raise ValueError(f"an ensemble needs members >= 1; got {self.members}")

    @property
    def classes(self) -> int:
        return self.net.classes

    def init(self, key, dtype=jnp.float32) -> dict:
        keys = jax.random.split(key, self.members)
        return {"members": [self.net.init(k, dtype) for k in keys]}

    def loss(self, params, x, labels, key):
        return sum(
            self.net.loss(p, x, labels, jax.random.fold_in(key, m))
            for m, p in enumerate(params["members"])
        )

    def logits(self, params, x):
        """log mean_m softmax(logits_m): [B, K]."""
        probs = [jax.nn.softmax(self.net.logits(p, x), axis=-1) for p in params["members"]]
        return jnp.log(sum(probs) / self.members)
