"""Online recurrent learning: cells, forward- and reverse-mode credit algorithms, tasks, metrics.

cell = rtrl.cells.get("vanilla", n_in=1, n_hidden=64, n_out=1)
algo = rtrl.algorithms.get("sparse_rtrl", cell, k=4, mask="ring")
grads = rtrl.sequence_grads(algo, params, xs, ys, key)
"""

from rtrl import algorithms, cells, losses, masks, optimizers
from rtrl.algorithms import sequence_grads
from rtrl.backprop import sequence_loss
from rtrl.losses import Target

__all__ = [
    "algorithms",
    "cells",
    "losses",
    "masks",
    "optimizers",
    "sequence_grads",
    "sequence_loss",
    "Target",
]
