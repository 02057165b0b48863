"""Presets for the ff study (seeds/ff_dtg_paper.md; issue 14).

    python -m experiments.ff --config=experiments/configs/ff.py:synthetic
    python -m experiments.ff --config=experiments/configs/ff.py:smoke

Every preset names an `experiment` (the study module dispatches on it) and that experiment's
settings; more experiments (fashion_mnist cpu / paper, cifar, ablations, the systems audit) are
more entries of EXPERIMENTS and more presets, each a function returning a ConfigDict.

- synthetic: the teacher–student K-sweep of §3.2 / App. E, exactly as the paper states it: a fresh
  3-layer ReLU teacher per seed (d_in 50, hidden 128), 20,000 train / 5,000 test samples, students
  4 × 128, Adam lr 1e-3, batch 256, 8,000 steps, seeds 42, 123, 456, 789, 1024,
  K ∈ {5, 10, 15, 20, 30, 50}; DTG-FF (u = z², logit-sum inference), single BP, BP-DeepSup,
  BP-Ensemble (4 members). Ours where the paper is silent: batches are epoch permutations of the
  training split (78 full batches per epoch, the remainder dropped; the permutation of epoch e is
  numpy's default_rng([seed, e])), float32, accuracies on the full splits every `chunk`
  steps. The low-K vs high-K contrast (App. E, "Pre-specified trend test"): K ∈ {5, 10, 15, 20}
  vs {30, 50}, difference of mean paired DTG-FF − BP-DeepSup, 10,000 bootstrap resamples of the
  paired observations within each group, seed 42, percentile 95% CI.
- smoke: the same study, tiny (2 seeds, K ∈ {3, 4}, 8-wide students, 60 steps): the test suite's.
"""

import ml_collections

EXPERIMENTS = ("synthetic",)
SYNTHETIC_METHODS = ("dtg_ff", "bp", "bp_deepsup", "bp_ensemble")
METHOD_LABELS = {
    "dtg_ff": "DTG-FF",
    "bp": "BP",
    "bp_deepsup": "BP-DeepSup",
    "bp_ensemble": "BP-Ensemble",
}


def _synthetic(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.experiment = "synthetic"
    c.title = "Synthetic teacher–student K-sweep (paper §3.2, App. E)"
    c.seeds = (42, 123, 456, 789, 1024)
    c.classes = (5, 10, 15, 20, 30, 50)
    c.methods = SYNTHETIC_METHODS
    c.d_in, c.teacher_hidden, c.width, c.depth = 50, 128, 128, 4
    c.n_train, c.n_test = 20_000, 5_000
    c.ensemble_members = 4
    c.lr, c.batch, c.steps = 1e-3, 256, 8_000
    c.chunk = 1_000  # steps per compiled call, per checkpoint and per accuracy measurement
    c.group = 1  # lanes per vmap inside lax.map (1: one lane at a time; measured faster on CPU)
    c.eval_batch = 5_000
    c.low_k, c.high_k = (5, 10, 15, 20), (30, 50)
    c.bootstrap, c.bootstrap_seed = 10_000, 42
    c.count_k = 10  # parameter counts reported at this K (the paper's)
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


PRESETS = {
    "synthetic": lambda: _synthetic(),
    "smoke": lambda: _synthetic(
        title="Synthetic K-sweep, smoke (tiny)",
        seeds=(42, 123),
        classes=(3, 4),
        d_in=8,
        teacher_hidden=16,
        width=8,
        depth=2,
        n_train=512,
        n_test=256,
        ensemble_members=2,
        batch=64,
        steps=60,
        chunk=20,
        eval_batch=256,
        low_k=(3,),
        high_k=(4,),
        bootstrap=2_000,
        count_k=3,
    ),
}


def get_config(preset: str = "smoke") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    config = PRESETS[preset]()
    config.preset = preset
    return config
