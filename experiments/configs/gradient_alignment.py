"""How far is each layer's local (trace) gradient from the end-to-end BPTT gradient?

Command (default preset, about a minute on 2 CPU cores):
    python -m experiments.gradient_alignment --config=experiments/configs/gradient_alignment.py
Presets (`:arg`): `cpu` (default): depths 1..6, 3 seeds, H = N = 64, B = 8, T = 256;
`smoke`: depths 1..3, 2 seeds, tiny sizes (seconds, for tests).
Expected: trace vs autodiff cosine prints 1.0000 for every layer (exactness); local vs BPTT
cosine is 1.0000 at depth 1 and decays for the lower layers as depth grows (the post reports
about 0.75 by five layers at random init).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "cpu"
    config = ml_collections.ConfigDict()
    config.preset = preset
    config.depths = [1, 2, 3, 4, 5, 6]
    config.num_seeds = 3
    config.batch_size = 8
    config.seq_len = 256
    config.data_seed = 0
    config.model = ml_collections.ConfigDict(
        {
            "d_model": 64,
            "d_state": 64,
            "r_min": 0.9,
            "r_max": 0.999,
            "max_phase": 6.283,
            "noise_std": 0.1,
        }
    )
    if preset == "smoke":
        config.depths = [1, 2, 3]
        config.num_seeds = 2
        config.batch_size = 2
        config.seq_len = 32
        config.model.d_model = 8
        config.model.d_state = 8
    elif preset != "cpu":
        raise ValueError(f"unknown preset {preset!r}; choose 'cpu' or 'smoke'")
    return config
