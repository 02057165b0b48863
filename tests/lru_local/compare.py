"""Leaf-by-leaf comparison of gradient pytrees."""

import jax
import numpy as np


def leaves_with_names(tree):
    return [
        (jax.tree_util.keystr(path), np.asarray(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def max_relative_errors(actual, reference):
    """{leaf: max|a - r| / max|r|}; leaves whose reference is exactly zero must match exactly."""
    errors = {}
    for (name, a), (_, r) in zip(
        leaves_with_names(actual), leaves_with_names(reference), strict=True
    ):
        scale = np.max(np.abs(r))
        if scale == 0.0:
            assert np.max(np.abs(a)) == 0.0, f"{name}: expected zeros, got max {np.max(np.abs(a))}"
            continue
        errors[name] = float(np.max(np.abs(a - r)) / scale)
    return errors


def cosines(actual, reference):
    """{leaf: cosine(a, r)} over leaves with a nonzero reference."""
    out = {}
    for (name, a), (_, r) in zip(
        leaves_with_names(actual), leaves_with_names(reference), strict=True
    ):
        a, r = a.ravel().astype(np.float64), r.ravel().astype(np.float64)
        if np.linalg.norm(r) > 0:
            out[name] = float(a @ r / (np.linalg.norm(a) * np.linalg.norm(r)))
    return out
