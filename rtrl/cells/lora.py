"""Low-rank adapters (LoRA, Hu et al. 2021) on a cell's recurrent matrices, for online adaptation
of a pretrained network (the immediate-derivative paper's LoRA experiments; our analogue is a
pretrained character-level cell, `experiments/configs/rtrl_immediate.py:lora`):

    W_p ← W_p + B_p A_p     for p in targets (default W_rec, W_in); A_p [r, cols], B_p [rows, r]

The cell's parameters are the base cell's plus the adapters (`<p>_A`, `<p>_B`); the base ones
are frozen by the optimizer (`online_study`'s "train": "adapters"), not by the cell, so the same
cell also serves full fine-tuning. B_p starts at 0 (the adapted cell equals the base at init) and
A_p ~ N(0, 1/cols). The adapted preactivation is not one z = Θ v over the trainable parameters, so
the cell is stepwise only (tbptt, bptt, full rtrl).
"""

import jax
import jax.numpy as jnp

from rtrl.cells.base import Cell, normal, stepwise_cell

ADAPTER_SUFFIXES = ("_A", "_B")


def is_adapter(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def lora(base: Cell, rank: int = 4, targets=("W_rec", "W_in")) -> Cell:
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"the LoRA rank must be >= 1, got {rank}")

    def init(key, dtype=jnp.float32):
        k_base, k_adapt = jax.random.split(key)
        params = base.init(k_base, dtype)
        for i, p in enumerate(targets):
            if p not in params:
                raise ValueError(
                    f"{base.name} has no parameter {p!r} to adapt; it has {sorted(params)}"
                )
            rows, cols = params[p].shape
            params[f"{p}_A"] = normal(jax.random.fold_in(k_adapt, i), (rank, cols), cols, dtype)
            params[f"{p}_B"] = jnp.zeros((rows, rank), dtype)
        return params

    def merged(params):
        out = {k: v for k, v in params.items() if not is_adapter(k)}
        for p in targets:
            out[p] = params[p] + params[f"{p}_B"] @ params[f"{p}_A"]
        return out

    return stepwise_cell(
        f"{base.name}_lora{rank}",
        base.n_in,
        base.n_hidden,
        base.n_out,
        init=init,
        initial_carry=base.initial_carry,
        transition=lambda params, carry, x: base.transition(merged(params), carry, x),
        output=lambda params, carry, x: base.output(merged(params), carry, x),
        hidden=base.hidden,
        output_params=base.output_params,
        bypass=base.bypass,
    )
