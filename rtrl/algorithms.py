"""Registry of online algorithms, and the fixed-parameter gradient of a whole sequence."""

import inspect

import jax
import jax.numpy as jnp

from rtrl import backprop, forward, stochastic
from rtrl.interface import Algorithm, StepOutput

_REGISTRY = {
    "rtrl": forward.rtrl,
    "sparse_rtrl": forward.sparse_rtrl,
    "snap1": forward.snap1,
    "traces": forward.traces,
    "uoro": stochastic.uoro,
    "kf_rtrl": stochastic.kf_rtrl,
    "tbptt": backprop.tbptt,
    "bptt": backprop.bptt,
}

NAMES = tuple(_REGISTRY)


def get(name: str, cell, **options) -> Algorithm:
    """Build an algorithm by registry name, e.g. get("sparse_rtrl", cell, k=4, mask="ring").

    Options per algorithm: rtrl(loss), sparse_rtrl(k, mask, loss, impl, native_kernel),
    snap1(loss), traces(decay, loss, native_kernel), uoro(loss, eps), kf_rtrl(loss, eps),
    tbptt(w, loss), bptt(length, loss).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown algorithm {name!r}; known algorithms: {list(NAMES)}")
    factory = _REGISTRY[name]
    params = inspect.signature(factory).parameters
    accepted = [p for p in params if p != "cell"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not take option(s) {unknown}; it accepts {accepted}")
    missing = [
        p
        for p, spec in params.items()
        if p != "cell" and spec.default is inspect.Parameter.empty and p not in options
    ]
    if missing:
        raise ValueError(f"{name} needs option(s) {missing}")
    return factory(cell, **options)


def sequence_grads(algo: Algorithm, params, xs, ys, key):
    """Σ_t out.grads over a sequence with the parameters held fixed, from algo.init(key, params).

    xs [T, n_in], ys [T, n_out] (or a losses.Target with leading T axes). For the exact
    algorithms this is ∂(Σ_t L_t)/∂θ, the BPTT gradient.
    """
    return scan_grads(algo, params, algo.init(key, params), xs, ys)[0]


def scan_grads(algo: Algorithm, params, state, xs, ys):
    """(Σ_t out.grads, out.loss [T]) over a sequence from `state`, parameters held fixed."""

    def body(carry, inputs):
        state, total = carry
        state, out = algo.step(params, state, *inputs)
        return (state, jax.tree.map(jnp.add, total, out.grads)), out.loss

    zeros = jax.tree.map(jnp.zeros_like, params)
    (_, total), losses = jax.lax.scan(body, (state, zeros), (xs, ys))
    return total, losses


__all__ = ["Algorithm", "StepOutput", "NAMES", "get", "scan_grads", "sequence_grads"]
