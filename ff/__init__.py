"""Forward-Forward and DTG-FF against architecture-matched backprop (seeds/ff_dtg_paper.md).

- goodness: goodness maps, temperature, margin and warm start, the two local losses, the label
  overlay and negative labels
- backbones: the Dense and VGG layer stacks every model shares (VGG8: `vgg8`)
- dtg: DTG-FF on any backbone (`DTGNet`); cnn: the DTG-CNN and BP CNNs on VGG8
- mlp: the FF-MLP (DTG, hybrid classifier) and plain Hinton FF
- baselines: BP, BP-DeepSup, BP + checkpointing (`BPNet`) and BP-Ensemble (`Ensemble`)
- synthetic: the teacher–student task of App. E and its four students
- rules: the learning rules in the shared contract (`get`, `RULES`)
- pipeline: the pipelined per-layer step of App. D.7, per-layer AdamW, compiled memory
- augment: crop, flip, colour jitter, Cutout as pure functions of a key
"""

from ff import augment, backbones, baselines, cnn, dtg, goodness, mlp, pipeline, rules, synthetic

__all__ = [
    "augment",
    "backbones",
    "baselines",
    "cnn",
    "dtg",
    "goodness",
    "mlp",
    "pipeline",
    "rules",
    "synthetic",
]
