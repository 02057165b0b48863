"""The audit paper's four diagnostics (§4) with its calibrated defaults, and the verdicts.

    (a) residual growth   max_l ‖h_{l+1}‖₂ / ‖h_l‖₂ over a fixed evaluation batch  > 50×
    (b) BP gradient floor ‖∂L/∂h_L‖₂ on the evaluation batch                       < 1e-7
    (c) direction drift   mean pairwise cosine of the BP-gradient direction across
                          disjoint minibatches                                      > 0.30
    (d) frozen blocks     trainable blocks beat the frozen-random-blocks baseline
                          (embedding, terminal LN and head trained) by less than     2 pp

h_l [B, d] is the residual stream entering block l (h_0 the embedding's output, h_L the input of
the terminal norm); ‖·‖₂ of a batch is the Frobenius norm over the batch (our reading of "over a
fixed evaluation batch"); L is the mean loss over the batch. A diagnostic "fires" when its
inequality holds. Verdicts (Table 2): S0 (accuracy) and S1 (+ Γ) never walk a method back (the
status quo: "---"); "+(x)" walks back (WB) where diagnostic x fires; "full" walks back where any
of (a)–(d) fires and says "trust" otherwise. Threshold robustness: every threshold × ½ and × 2.
"""

from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from fa_audit import metrics

DIAGNOSTICS = ("a", "b", "c", "d")
STRATEGIES = ("S0", "S1", "+(a)", "+(b)", "+(c)", "+(d)", "full")


class Thresholds(NamedTuple):
    growth: float = 50.0
    grad_floor: float = 1e-7
    direction: float = 0.30
    margin_pp: float = 2.0

    def scaled(self, factor: float) -> Thresholds:
        return Thresholds(*(float(t) * factor for t in self))


DEFAULTS = Thresholds()  # the paper's calibrated defaults


class Measurements(NamedTuple):
    """One trained network's numbers (Python floats)."""

    growth: float  # (a) max_l ‖h_{l+1}‖ / ‖h_l‖
    grad_norm: float  # (b) ‖∂L/∂h_L‖
    direction: float  # (c) mean pairwise cosine across batches
    margin_pp: float  # (d) accuracy − frozen-blocks accuracy, percentage points


def residual_growth(hidden) -> tuple[float, list[float]]:
    """(max, per block) of ‖h_{l+1}‖ / ‖h_l‖ for the list hidden = [h_0, …, h_L], each [B, d]."""
    if len(hidden) < 2:
        raise ValueError(f"residual growth needs at least two residual states, got {len(hidden)}")
    norms = [float(jnp.linalg.norm(jnp.asarray(h))) for h in hidden]
    if min(norms[:-1]) == 0:
        raise ValueError("a residual state of norm 0: the growth ratio is undefined")
    per_block = [b / a for a, b in zip(norms[:-1], norms[1:], strict=True)]
    return max(per_block), per_block


def bp_grad_norm(grad_h_L) -> float:
    """‖∂L/∂h_L‖₂ of the batch gradient [B, d] (diagnostic (b))."""
    return float(jnp.linalg.norm(jnp.asarray(grad_h_L)))


def direction_stability(grads) -> float:
    """Mean pairwise `metrics.cosine` of the BP gradients of disjoint minibatches (a list of
    arrays or pytrees, at least two)."""
    if len(grads) < 2:
        raise ValueError(f"direction stability needs >= 2 minibatches, got {len(grads)}")
    return float(np.mean([float(metrics.cosine(a, b)) for a, b in combinations(grads, 2)]))


def frozen_margin(accuracy: float, frozen_accuracy: float) -> float:
    """Trainable-blocks accuracy minus the frozen-random-blocks baseline's, in pp."""
    return 100.0 * (float(accuracy) - float(frozen_accuracy))


def fires(m: Measurements, t: Thresholds | None = None) -> dict:
    """{diagnostic: bool} for the four diagnostics (t: the calibrated defaults if None)."""
    t = t or DEFAULTS
    return {
        "a": m.growth > t.growth,
        "b": m.grad_norm < t.grad_floor,
        "c": m.direction > t.direction,
        "d": m.margin_pp < t.margin_pp,
    }


def verdicts(m: Measurements, t: Thresholds | None = None) -> dict:
    """{strategy: "---" | "WB" | "trust"} for the seven reporting strategies of Table 2."""
    t = t or DEFAULTS
    fired = fires(m, t)
    out = {"S0": "---", "S1": "---"}
    out.update({f"+({d})": "WB" if fired[d] else "---" for d in DIAGNOSTICS})
    out["full"] = "WB" if any(fired.values()) else "trust"
    return out


def robustness(m: Measurements, t: Thresholds | None = None) -> dict:
    """The full protocol's verdict with every threshold × ½, × 1 and × 2."""
    t = t or DEFAULTS
    return {factor: verdicts(m, t.scaled(factor))["full"] for factor in (0.5, 1.0, 2.0)}
