"""DTG-FF on any backbone of `ff.backbones` (paper §4, App. A.1, A.4, A.5): the DTG-CNN on a VGG
and the synthetic DTG-FF student on a Dense stack.

Per layer l (0-based, L layers), with x̂_{−1} = x:
    z_l = layer_l(stop_gradient(x̂_{l−1}))              the detach boundary
    u_l = goodness_l(z_l)  [B, m_l]                     raw z_l, no normalisation (FF path)
    T_l = T_min + (T_max − T_min) σ(α_l),  α_l = 0 at init   (fixed_temperature: T_l = 1)
    ψ_l = (u_l / T_l)ᵀ R_l + b_l  [B, K],  R_l, b_l ~ N(0, 1/K) fixed
    L_l = CE(ψ_l, y)                                    per-layer local cross-entropy, Eq. (7)
    x̂_l = propagate_l(z_l)                              pool → channel LN → dropout 0.1 (path 2)
Classifier (aggregation="concat"; path 3), on stop-gradded features of layers 1 … L−1:
    c = Linear(dropout_0.2(BN(concat_l GAP(z_l))))     L_cls = CE_smooth0.1(c, y)
Inference: "concat" → c; "logit_sum" → Σ_{l=0}^{L−1} ψ_l (no learned head; then the model has no
classifier parameters and L_cls is absent).

Parameters: {"layers": [{"W", "b", "alpha"} …], "classifier": {"bn": {"g", "b"}, "W", "b"}}; the
fixed readouts [{"R", "b"} …] come from `init_readout` and live in the rule's state. The training
objective is Σ_l L_l + L_cls; because every layer's input and the classifier's features are
stop-gradded, its gradient with respect to layer l's parameters is ∇ L_l alone (tested).
BatchNorm uses the batch's statistics in training and evaluation (no running averages: evaluation
batches are large), so the model stays a pure function of (params, x).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ff import goodness as gd
from ff.backbones import _uniform_layer, dropout

BN_EPS = 1e-5
AGGREGATIONS = ("concat", "logit_sum")


def batch_norm(x: jax.Array, bn: dict) -> jax.Array:
    """(x − mean_B) / √(var_B + 1e-5) · g + b over the batch axis: x [B, F]."""
    mu = jnp.mean(x, axis=0)
    var = jnp.mean(jnp.square(x - mu), axis=0)
    return (x - mu) * jax.lax.rsqrt(var + BN_EPS) * bn["g"] + bn["b"]


class Objective(NamedTuple):
    layer_losses: jax.Array  # [L] the local losses L_l
    classifier_loss: jax.Array  # [] L_cls (0 for logit_sum)


@dataclasses.dataclass(frozen=True)
class DTGNet:
    backbone: object
    classes: int
    t_min: float = 0.5
    t_max: float = 2.0
    fixed_temperature: bool = False  # ablation: T_l = 1
    aggregation: str = "concat"
    normalise_readout: bool = False  # ablation: column-normalised R̃_l
    classifier_dropout: float = 0.2
    label_smoothing: float = 0.1
    classifier_layers: tuple | None = None  # default 1 … L−1

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {self.aggregation!r}")
        if self.classes < 2:
            raise ValueError(f"DTG-FF needs K >= 2 classes; got {self.classes}")
        gd.temperature(0.0, self.t_min, self.t_max)  # validates the range
        if self.aggregation == "concat" and not self.feature_layers:
            raise ValueError(
                "the concat classifier reads layers 1 … L−1, empty for a one-layer backbone: "
                "use aggregation='logit_sum' or pass classifier_layers"
            )

    @property
    def depth(self) -> int:
        return self.backbone.depth

    @property
    def feature_layers(self) -> tuple:
        if self.classifier_layers is not None:
            return tuple(self.classifier_layers)
        return tuple(range(1, self.depth))

    def init(self, key, dtype=jnp.float32) -> dict:
        kb, kc = jax.random.split(key)
        layers = [{**p, "alpha": jnp.zeros((), dtype)} for p in self.backbone.init(kb, dtype)]
        params = {"layers": layers}
        if self.aggregation == "concat":
            F = sum(self.backbone.feature_dim(l) for l in self.feature_layers)
            params["classifier"] = {
                "bn": {"g": jnp.ones((F,), dtype), "b": jnp.zeros((F,), dtype)},
                **_uniform_layer(kc, (F, self.classes), F, dtype),
            }
        return params

    def init_readout(self, key, dtype=jnp.float32) -> list:
        """The fixed R_l [m_l, K], b_l [K] of every layer."""
        keys = jax.random.split(key, self.depth)
        return [
            gd.random_readout(
                k, self.backbone.goodness_dim(l), self.classes, dtype, self.normalise_readout
            )
            for l, k in enumerate(keys)
        ]

    def temperature(self, layer_params) -> jax.Array:
        if self.fixed_temperature:
            return jnp.ones((), layer_params["W"].dtype)
        return gd.temperature(layer_params["alpha"], self.t_min, self.t_max)

    def layer_logits(self, l, layer_params, readout_l, x_in):
        """(ψ_l [B, K], z_l) for layer l's input x_in (not stop-gradded here)."""
        z = self.backbone.layer(l, layer_params, x_in)
        u = self.backbone.goodness(l, z)
        return gd.readout_logits(u, self.temperature(layer_params), readout_l), z

    def layer_loss(self, l, layer_params, readout_l, x_in, labels):
        """(L_l = CE(ψ_l, y), z_l): layer l's local loss on its input x_in."""
        logits, z = self.layer_logits(l, layer_params, readout_l, x_in)
        return gd.cross_entropy(logits, labels), z

    def classifier(self, classifier_params, features, key, train):
        """c [B, K] = Linear(dropout(BN(concat features))); features: list of [B, C_l]."""
        f = batch_norm(jnp.concatenate(features, axis=-1), classifier_params["bn"])
        f = dropout(key, f, self.classifier_dropout, train)
        return f @ classifier_params["W"] + classifier_params["b"]

    def classifier_loss(self, classifier_params, features, labels, key):
        logits = self.classifier(classifier_params, features, key, True)
        return gd.cross_entropy(logits, labels, self.label_smoothing)

    def objective(self, params, readout, x, labels, key, weights=None):
        """(Σ_l w_l L_l + L_cls, Objective); weights [L] default ones (tests perturb them)."""
        x_hat = self.backbone.prepare(x)
        losses, features = [], []
        for l in range(self.depth):
            loss, z = self.layer_loss(
                l, params["layers"][l], readout[l], jax.lax.stop_gradient(x_hat), labels
            )
            losses.append(loss)
            if l in self.feature_layers:
                features.append(jax.lax.stop_gradient(self.backbone.features(l, z)))
            x_hat = self.backbone.propagate(l, z, jax.random.fold_in(key, l), True)
        losses = jnp.stack(losses)
        w = jnp.ones_like(losses) if weights is None else jnp.asarray(weights, losses.dtype)
        cls = jnp.zeros((), losses.dtype)
        if self.aggregation == "concat":
            cls = self.classifier_loss(
                params["classifier"], features, labels, jax.random.fold_in(key, self.depth)
            )
        return jnp.sum(w * losses) + cls, Objective(losses, cls)

    def evaluate(self, params, readout, x):
        """(per-layer ψ [L, B, K], classifier logits [B, K] or None) without dropout."""
        x_hat = self.backbone.prepare(x)
        logits, features = [], []
        key = jax.random.key(0)  # unused: dropout is off in evaluation
        for l in range(self.depth):
            psi, z = self.layer_logits(l, params["layers"][l], readout[l], x_hat)
            logits.append(psi)
            if l in self.feature_layers:
                features.append(self.backbone.features(l, z))
            x_hat = self.backbone.propagate(l, z, key, False)
        cls = None
        if self.aggregation == "concat":
            cls = self.classifier(params["classifier"], features, key, False)
        return jnp.stack(logits), cls

    def logits(self, params, readout, x, aggregation=None):
        """[B, K] by `aggregation` (default the model's): concat → the classifier, logit_sum →
        Σ_l ψ_l."""
        aggregation = aggregation or self.aggregation
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}; got {aggregation!r}")
        per_layer, cls = self.evaluate(params, readout, x)
        if aggregation == "logit_sum":
            return jnp.sum(per_layer, axis=0)
        if cls is None:
            raise ValueError("this model has no classifier (aggregation='logit_sum' at init)")
        return cls
