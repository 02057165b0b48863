"""The DTG-CNN and its architecture-matched BP baselines on one VGG backbone (paper §4.2, §5.2).

    model = cnn.dtg_cnn(classes=10)                        # VGG8, 32×32×3, concat classifier
    model = cnn.dtg_cnn(10, aggregation="logit_sum")       # logit-sum inference, no head
    model = cnn.dtg_cnn(10, width_scale=1 / 16)            # CPU presets and tests
    bp = cnn.bp_cnn(10, head="deepsup")                    # BP-DeepSup on the same backbone

Ablations (§5.4, App. A.5) are options: fixed_temperature=True (T = 1), interlayer_norm=False
(no inter-layer LayerNorm), normalise_readout=True (column-normalised R̃_l), aggregation
("concat" / "logit_sum"). The backbone options (image, in_channels, widths or width_scale,
pool_after, goodness_pool, dropout) go to `ff.backbones.vgg8` / `VGG`.

Inputs must fit the pool schedule: VGG8 pools four times, so the image side must be a multiple of
16 and leave a map >= goodness_pool (2×2) at the last layer: 32×32 gives 2×2. A 28×28 image
(Fashion-MNIST) is padded to 32×32 first (`ff.augment.pad_to`), as MedMNIST's 28×28 images
were upsampled to the 32 grid in the paper (App. D.2).
"""

from __future__ import annotations

import dataclasses

from ff.backbones import VGG, vgg8
from ff.baselines import BPNet, Ensemble
from ff.dtg import DTGNet

_BACKBONE_OPTIONS = (
    "in_channels",
    "image",
    "width_scale",
    "widths",
    "pool_after",
    "goodness_pool",
    "interlayer_norm",
    "dropout",
)


def backbone(**options) -> VGG:
    """VGG8 (or, with widths=, any VGG) from backbone options."""
    unknown = set(options) - set(_BACKBONE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown backbone options {sorted(unknown)}; known: {_BACKBONE_OPTIONS}")
    if "widths" in options:
        if "width_scale" in options:
            raise ValueError("give widths or width_scale, not both")
        return VGG(
            **{
                k: tuple(v) if k in ("widths", "pool_after", "image", "goodness_pool") else v
                for k, v in options.items()
            }
        )
    return vgg8(**options)


def _split(options, model_class):
    bb = {k: v for k, v in options.items() if k in _BACKBONE_OPTIONS}
    rest = {k: v for k, v in options.items() if k not in _BACKBONE_OPTIONS}
    known = {f.name for f in dataclasses.fields(model_class)} - {"backbone", "classes"}
    if set(rest) - known:
        raise ValueError(
            f"unknown options {sorted(set(rest) - known)}; backbone options: "
            f"{_BACKBONE_OPTIONS}, {model_class.__name__} options: {sorted(known)}"
        )
    return backbone(**bb), rest


def dtg_cnn(classes: int, **options) -> DTGNet:
    """DTG-FF on VGG8: T ∈ [0.5, 2], α = 0 at init, R_l, b_l ~ N(0, 1/K), concat classifier
    (BN → dropout 0.2 → linear, label smoothing 0.1) unless aggregation="logit_sum"."""
    bb, rest = _split(options, DTGNet)
    return DTGNet(backbone=bb, classes=classes, **rest)


def bp_cnn(classes: int, head: str = "single", checkpoint: bool = False, **options) -> BPNet:
    """BP (head="single") or BP-DeepSup (head="deepsup") on the DTG-CNN's backbone."""
    bb, rest = _split(options, BPNet)
    return BPNet(backbone=bb, classes=classes, head=head, checkpoint=checkpoint, **rest)


def bp_ensemble_cnn(classes: int, members: int = 4, **options) -> Ensemble:
    """BP-Ensemble: `members` independent single-head BP CNNs, softmax-averaged."""
    return Ensemble(bp_cnn(classes, **options), members)
