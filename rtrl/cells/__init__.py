"""Recurrent cells with explicit parameters, written so that forward-mode credit can see inside.

    cell = rtrl.cells.get("lstm", n_in=1, n_hidden=64, n_out=1)

The shared factorisation and what a cell declares are in `rtrl.cells.base`; one module per cell.
Initialisation (the papers leave it implicit): W_rec ~ N(0, 1/n), W_in ~ N(0, 1/n_in),
W_out ~ N(0, 1/n), biases 0 except the LSTM forget-gate bias, which is 1.
Factorised (every algorithm): vanilla, lstm, ctrnn, slstm. Stepwise only (tbptt, bptt, full
rtrl): gru, block_gru_mlp, rwkv, retnet, s4, vanilla_2layer (two stacked vanilla layers),
lstm_lora4 (rank-4 adapters on the LSTM's W_rec and W_in, `lora`).
"""

from rtrl.cells.base import (
    CAPABILITIES,
    FACTORISED,
    READOUT,
    RECURRENT,
    STEPWISE,
    Carry,
    Cell,
    Params,
    add_to_hidden,
    carry_leaves,
    core_tangent,
    inputs_vector,
    param_dtype,
    preactivation,
    readout,
    require,
    split_theta,
    stepwise_cell,
    theta,
)
from rtrl.cells.block_gru_mlp import block_gru_mlp
from rtrl.cells.ctrnn import ctrnn
from rtrl.cells.gru import gru
from rtrl.cells.lora import is_adapter, lora
from rtrl.cells.lstm import lstm
from rtrl.cells.retnet import retnet
from rtrl.cells.rwkv import rwkv
from rtrl.cells.s4 import s4
from rtrl.cells.slstm import slstm
from rtrl.cells.stacked import vanilla_2layer
from rtrl.cells.vanilla import vanilla

_REGISTRY = {
    "vanilla": vanilla,
    "lstm": lstm,
    "ctrnn": ctrnn,
    "gru": gru,
    "block_gru_mlp": block_gru_mlp,
    "slstm": slstm,
    "rwkv": rwkv,
    "retnet": retnet,
    "s4": s4,
    "vanilla_2layer": vanilla_2layer,
    "lstm_lora4": lambda n_in, n_hidden, n_out: lora(lstm(n_in, n_hidden, n_out), rank=4),
}
NAMES = tuple(_REGISTRY)


def get(name: str, n_in: int, n_hidden: int, n_out: int) -> Cell:
    """Look up a cell by name (see NAMES)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown cell {name!r}; known cells: {sorted(_REGISTRY)}")
    for label, value in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if int(value) < 1:
            raise ValueError(f"{label} must be a positive integer, got {value}")
    return _REGISTRY[name](int(n_in), int(n_hidden), int(n_out))


__all__ = [
    "CAPABILITIES",
    "FACTORISED",
    "NAMES",
    "READOUT",
    "RECURRENT",
    "STEPWISE",
    "Carry",
    "Cell",
    "Params",
    "add_to_hidden",
    "block_gru_mlp",
    "carry_leaves",
    "core_tangent",
    "ctrnn",
    "get",
    "gru",
    "inputs_vector",
    "is_adapter",
    "lora",
    "lstm",
    "param_dtype",
    "preactivation",
    "readout",
    "require",
    "retnet",
    "rwkv",
    "s4",
    "slstm",
    "split_theta",
    "stepwise_cell",
    "theta",
    "vanilla",
    "vanilla_2layer",
]
