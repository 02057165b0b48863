"""Static configuration of a residual LRU stack (hashable, so jitted functions close over it)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any


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
      activation: φ in y_t = φ(Re(C s_t)) + D ⊙ u_t: "none" (the post's linear readout) or
        "gelu". The traces are exact for either (φ acts downstream of the state).
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

        if self.activation not in ("none", "gelu"):
            raise ValueError(f"Config.activation must be 'none' or 'gelu', got {self.activation!r}")

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
