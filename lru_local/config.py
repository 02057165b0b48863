"""Static configuration of a residual LRU stack (hashable, so jitted functions close over it)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

# The allowed values of the string-valued architecture switches; the first is the default (the
# post's model). Checked in Config.__post_init__.
CHOICES = {
    "activation": ("none", "gelu"),
    "norm": ("none", "layer"),
    "block": ("lru", "lru_glu"),
    "head_input": ("output", "stream"),
    "embedding": ("frozen", "learned"),
    "gamma": ("folded", "trainable"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Sizes and initialisation of the residual stack of complex diagonal LRU layers.

    Attributes:
      d_model: H, width of the residual stream u^ℓ_t and of each layer output y^ℓ_t.
      d_state: N, number of complex state units s^ℓ_t per layer.
      depth: L, number of LRU layers.
      vocab: size of the byte alphabet (256 for enwik8).
      r_min, r_max: ring initialisation of |λ| (uniform in |λ|², Orvieto et al. 2023).
      max_phase: arg(λ) initialised uniform in [0, max_phase].
      noise_std: σ of the denoising target x̃_{t+1} = E[x_{t+1}] + σ·ε of hidden layers.
      d_init_std: std of the skip weights D at init (small: D multiplies the residual stream).
      embed_std: std of the entries of the fixed embedding E.
      activation: φ in y_t = φ(Re(C s_t)) + D ⊙ n_t of block "lru": "none" (the post's linear
        readout) or "gelu". The traces are exact for either (φ acts downstream of the state).
        Must stay "none" for block "lru_glu", which has its GELU built in.
      norm: "none" (n_t = u_t, the post) or "layer": n_t = LN(u_t), a parameter-free prenorm
        LayerNorm of the layer input before B and D (Zucchet et al.'s prenorm).
      block: "lru" (y_t = φ(Re(C s_t)) + D ⊙ n_t, the post) or "lru_glu" (Zucchet et al.):
        z_t = GELU(Re(C s_t) + D ⊙ n_t), y_t = (z_t W₁ + b₁) ⊙ σ(z_t W₂ + b₂). Either way
        u^{ℓ+1}_t = u^ℓ_t + y^ℓ_t.
      head_input: what the hidden heads g^ℓ and the decoder read: "output" (y^ℓ_t, the post) or
        "stream" (LN(u^{ℓ+1}_t), the residual stream after the layer, parameter-free LN).
      embedding: "frozen" (E fixed random, the post) or "learned" (E trained by both trainers;
        in the local trainer layer 1 owns it, the denoising targets become the stop-gradded
        L2-normalised rows E[x_{t+1}] / ||E[x_{t+1}]||).
      gamma: "folded" (the input normalisation γ = sqrt(1 - |λ|²) multiplied into B at init,
        the post) or "trainable" (s_t = λ ⊙ s_{t-1} + γ ⊙ (B n_t), γ = exp(gamma_log) a
        parameter initialised to sqrt(1 - |λ|²), as in Orvieto/Zucchet's LRU code).
    """

    d_model: int = 64
    d_state: int = 64
    depth: int = 4
    vocab: int = 256
    r_min: float = 0.9
    r_max: float = 0.999
    max_phase: float = 2 * math.pi
    noise_std: float = 0.1
    d_init_std: float = 0.1
    embed_std: float = 1.0
    activation: str = "none"
    norm: str = "none"
    block: str = "lru"
    head_input: str = "output"
    embedding: str = "frozen"
    gamma: str = "folded"

    def __post_init__(self):
        for name in ("d_model", "d_state", "depth", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.r_min < self.r_max < 1.0:
            raise ValueError(
                f"Config needs 0 <= r_min < r_max < 1 for a stable ring init, "
                f"got r_min={self.r_min}, r_max={self.r_max}"
            )
        for name in ("max_phase", "noise_std", "d_init_std", "embed_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"Config.{name} must be a finite number >= 0, got {value!r}")

        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"Config.{name} must be one of {list(allowed)}, got {value!r}")
        if self.block == "lru_glu" and self.activation != "none":
            raise ValueError(
                f"Config.activation={self.activation!r} applies to block='lru' only "
                "(y = φ(Re(C s)) + D⊙n); block='lru_glu' has its GELU built in "
                "(z = GELU(Re(C s) + D⊙n)): leave activation='none'"
            )

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Config:
        """Builds a Config from a dict or ml_collections.ConfigDict, rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ValueError(
                f"unknown lru_local.Config key(s) {unknown}; valid keys are {sorted(known)}"
            )
        return cls(**dict(mapping))
