"""The FF-MLP of paper App. A.2–A.3 (DTG) and plain Hinton FF (the historical baseline).

Per layer l of L, on flat inputs x [B, D] (D >= K):
    x⁺ = overlay(x, y),  x⁻ = overlay(x, y⁻),  y⁻ ~ uniform over the other K − 1 labels
    z_l = ReLU(stop_gradient(x̂_{l−1}) W_l + b_l),   x̂_{−1} = x±,  x̂_l = z_l / rms(z_l)
    g_l = ‖z_l‖² / d_l                                       scalar goodness
    T_l = T_min + (T_max − T_min) σ(α_l), T ∈ [0.1, 2];   θ_l = softplus(θ_{0,l})
    L_l = −log σ(g_l⁺/T_l − θ_l) − log σ(θ_l − g_l⁻/T_l)    Eq. (8), batch mean
Hybrid classifier (Eq. 9), on the neutral overlay x⁰ (first K inputs ← λ/K, no label known):
    a_i = x̂_{i−1} W_i + b_i (no detach),  c = Linear(concat_{i<L−1} BN_i(a_i)),  L_cls = CE(c, y)
    L_total = λ_ff Σ_l L_l + L_cls,   λ_ff = 0.1
so the classifier backpropagates end-to-end through the layer weights (the paper says so: the
MLP is a hybrid FF + BP system); the FF part of every layer's gradient is layer-local.
Goodness-sum inference tries every label: score_k = Σ_l g_l(overlay(x, k)) / T_l, predict argmax.

`plain=True` is Hinton's FF: T = 1, a fixed threshold θ = `threshold` (2.0, on the mean square)
instead of a learned margin, no warm start, no classifier (goodness-sum inference), loss Σ_l L_l.

Our readings where the paper is silent: the inter-layer normalisation x̂_l = z_l / rms(z_l)
(Hinton normalises the hidden vector's length so the next layer cannot read the goodness; we
scale it to unit mean square, so inputs stay O(1)); the classifier's neutral overlay λ/K; the
warm start measures ḡ_l over the first batch's positive and negative passes together (2B samples,
raw g, before T) — `warm_start`, to call once on the first batch before training.

Parameters: {"layers": [{"W", "b", "alpha", "theta0"} …], "classifier": {"bn": [{"g", "b"} …
for i < L−1], "W", "b"}} (no "classifier" when plain; α and θ_0 stay, with zero gradient).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ff import goodness as gd
from ff.backbones import _uniform_layer
from ff.dtg import batch_norm

RMS_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class FFMLP:
    d_in: int
    widths: tuple = (2048, 2048, 2048, 2048)
    classes: int = 10
    lam: float = 1.0
    t_min: float = 0.1
    t_max: float = 2.0
    lambda_ff: float = 0.1
    plain: bool = False
    threshold: float = 2.0

    def __post_init__(self):
        if self.classes < 2:
            raise ValueError(f"FF needs K >= 2 classes (a negative label); got {self.classes}")
        if self.d_in < self.classes:
            raise ValueError(
                f"the label overlay writes the first K = {self.classes} of d_in = {self.d_in} "
                "inputs: d_in must be >= K"
            )
        if not self.plain and len(self.widths) < 2:
            raise ValueError("the hybrid classifier reads layers i < L−1: use >= 2 layers")
        gd.temperature(0.0, self.t_min, self.t_max)

    @property
    def depth(self) -> int:
        return len(self.widths)

    def init(self, key, dtype=jnp.float32) -> dict:
        keys = jax.random.split(key, self.depth + 1)
        sizes = (self.d_in, *self.widths)
        layers = [
            {
                **_uniform_layer(keys[l], (sizes[l], sizes[l + 1]), sizes[l], dtype),
                "alpha": jnp.zeros((), dtype),
                "theta0": jnp.zeros((), dtype),
            }
            for l in range(self.depth)
        ]
        params = {"layers": layers}
        if not self.plain:
            F = sum(self.widths[:-1])
            params["classifier"] = {
                "bn": [
                    {"g": jnp.ones((w,), dtype), "b": jnp.zeros((w,), dtype)}
                    for w in self.widths[:-1]
                ],
                **_uniform_layer(keys[-1], (F, self.classes), F, dtype),
            }
        return params

    def temperature(self, layer_params):
        if self.plain:
            return jnp.ones((), layer_params["W"].dtype)
        return gd.temperature(layer_params["alpha"], self.t_min, self.t_max)

    def margin(self, layer_params):
        if self.plain:
            return jnp.asarray(self.threshold, layer_params["W"].dtype)
        return gd.margin(layer_params["theta0"])

    def _flat(self, x):
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.d_in:
            raise ValueError(f"FFMLP expects {self.d_in} inputs per sample; got {x.shape[1]}")
        return x

    @staticmethod
    def pre_activation(layer_params, x_in):
        return x_in @ layer_params["W"] + layer_params["b"]

    @staticmethod
    def propagate(z):
        """x̂ = z / rms(z): unit mean square per sample, so the goodness is not passed on."""
        return z / jnp.sqrt(jnp.mean(jnp.square(z), axis=-1, keepdims=True) + RMS_EPS)

    def layer_goodness(self, layer_params, x_in):
        """(g [B], z [B, d]) of one layer on its input."""
        z = jax.nn.relu(self.pre_activation(layer_params, x_in))
        return gd.mean_square_goodness(z), z

    def layer_loss(self, layer_params, x_pos, x_neg):
        """(L_l, (z⁺, z⁻)) of Eq. (8) on the layer's positive and negative inputs."""
        g_pos, z_pos = self.layer_goodness(layer_params, x_pos)
        g_neg, z_neg = self.layer_goodness(layer_params, x_neg)
        T, theta = self.temperature(layer_params), self.margin(layer_params)
        loss = gd.margin_loss(g_pos, g_neg, T, theta)
        return loss, (z_pos, z_neg)

    def passes(self, x, labels, key):
        """(x⁺, x⁻) with y⁻ drawn from `key` among the other labels."""
        x = self._flat(x)
        y_neg = gd.negative_labels(key, labels, self.classes)
        return (
            gd.overlay_label(x, labels, self.classes, self.lam),
            gd.overlay_label(x, y_neg, self.classes, self.lam),
        )

    def ff_losses(self, params, x, labels, key):
        """[L] the layer-local losses, every layer's inputs stop-gradded."""
        x_pos, x_neg = self.passes(x, labels, key)
        losses = []
        for lp in params["layers"]:
            loss, (z_pos, z_neg) = self.layer_loss(
                lp, jax.lax.stop_gradient(x_pos), jax.lax.stop_gradient(x_neg)
            )
            losses.append(loss)
            x_pos, x_neg = self.propagate(z_pos), self.propagate(z_neg)
        return jnp.stack(losses)

    def classifier_logits(self, params, x):
        """c [B, K] of the hybrid head on the neutral overlay, end-to-end differentiable."""
        if self.plain:
            raise ValueError("plain Hinton FF has no classifier: use goodness_scores")
        h = gd.overlay_neutral(self._flat(x), self.classes, self.lam)
        features = []
        for i, lp in enumerate(params["layers"][:-1]):
            a = self.pre_activation(lp, h)
            features.append(batch_norm(a, params["classifier"]["bn"][i]))
            h = self.propagate(jax.nn.relu(a))
        f = jnp.concatenate(features, axis=-1)
        return f @ params["classifier"]["W"] + params["classifier"]["b"]

    def objective(self, params, x, labels, key, weights=None, classifier_weight=1.0):
        """(λ_ff Σ_l w_l L_l + w_cls L_cls, (L_l [L], L_cls)); plain: (Σ_l w_l L_l, (…, 0))."""
        losses = self.ff_losses(params, x, labels, key)
        w = jnp.ones_like(losses) if weights is None else jnp.asarray(weights, losses.dtype)
        if self.plain:
            return jnp.sum(w * losses), (losses, jnp.zeros((), losses.dtype))
        cls = gd.cross_entropy(self.classifier_logits(params, x), labels)
        return self.lambda_ff * jnp.sum(w * losses) + classifier_weight * cls, (losses, cls)

    def mean_goodness(self, params, x, labels, key) -> jax.Array:
        """[L] ḡ_l over the positive and negative passes of a batch (raw g, before T)."""
        x_pos, x_neg = self.passes(x, labels, key)
        out = []
        for lp in params["layers"]:
            g_pos, z_pos = self.layer_goodness(lp, x_pos)
            g_neg, z_neg = self.layer_goodness(lp, x_neg)
            out.append(jnp.mean(jnp.concatenate([g_pos, g_neg])))
            x_pos, x_neg = self.propagate(z_pos), self.propagate(z_neg)
        return jnp.stack(out)

    def warm_start(self, params, x, labels, key) -> dict:
        """params with θ_{0,l} ← warm_start_theta0(ḡ_l) of this (first) batch; plain: unchanged."""
        if self.plain:
            return params
        g = self.mean_goodness(params, x, labels, key)
        layers = [
            {**lp, "theta0": gd.warm_start_theta0(g[l]).astype(lp["theta0"].dtype)}
            for l, lp in enumerate(params["layers"])
        ]
        return {**params, "layers": layers}

    def goodness_scores(self, params, x) -> jax.Array:
        """[B, K] score_k = Σ_l g_l(overlay(x, k)) / T_l (every label tried)."""
        x = self._flat(x)

        def score(k):
            h = gd.overlay_label(x, jnp.full((x.shape[0],), k), self.classes, self.lam)
            total = jnp.zeros((x.shape[0],), x.dtype)
            for lp in params["layers"]:
                g, z = self.layer_goodness(lp, h)
                total = total + g / self.temperature(lp)
                h = self.propagate(z)
            return total

        return jax.vmap(score, out_axes=1)(jnp.arange(self.classes))

    def predict(self, params, x) -> jax.Array:
        """[B] labels: the classifier's argmax (DTG) or the goodness-sum argmax (plain)."""
        if self.plain:
            return jnp.argmax(self.goodness_scores(params, x), axis=-1)
        scores = self.classifier_logits(params, x)
        return jnp.argmax(scores, axis=-1)


def hinton(d_in: int, widths=(2048, 2048, 2048, 2048), classes: int = 10, **options) -> FFMLP:
    """Plain Hinton FF (T = 1, fixed threshold, no warm start, goodness-sum inference)."""
    return FFMLP(d_in=d_in, widths=tuple(widths), classes=classes, plain=True, **options)
