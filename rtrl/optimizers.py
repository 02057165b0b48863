"""The optimizer registry: optax transformations by name, the learning rate an array in the state.

    tx = optimizers.get("rmsprop", learning_rate)        # learning_rate: float or traced array
    opt_state = tx.init(params)                          # holds learning_rate (vmappable)
    updates, opt_state = tx.update(grads, opt_state, params)

Every transformation is wrapped in `optax.inject_hyperparams` with the learning rate as its one
injected hyperparameter, so `tx.init` under `jax.vmap` over learning rates gives each lane its own
rate and `update` reads it from the state; the other hyperparameters are Python constants. A
learning rate is stored in the parameters' dtype (float64 runs keep 1e-3 exact).

    sgd           θ ← θ − η g
    momentum      v ← μ v + g, θ ← θ − η v                           (μ = 0.9; optax.sgd(momentum))
    adam          Adam (β1 0.9, β2 0.999, ε 1e-8 outside the square root)
    rmsprop       v ← α v + (1 − α) g², θ ← θ − η g / (√v + ε)       (α = 0.99, ε = 1e-8, v_0 = 0:
                  PyTorch's defaults; optax's own are α = 0.9 and ε inside the square root, which
                  on gradients of size 1e-4 changes the step by two orders of magnitude)
    adam_b1_only  m ← β1 m + (1 − β1) g, θ ← θ − η m / (1 − β1^t)    (no second moment; note that
                  adam(b2=0) is not this: it divides by |g|, i.e. it is sign-like)
    adam_b2_only  adam(b1=0): θ ← θ − η g / (√v̂ + ε)                (no first moment)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def _adam_b1_only(learning_rate, b1=0.9):
    return optax.chain(optax.ema(b1, debias=True), optax.scale_by_learning_rate(learning_rate))


_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda learning_rate, momentum=0.9: optax.sgd(learning_rate, momentum=momentum),
    "adam": lambda learning_rate, b1=0.9, b2=0.999, eps=1e-8: optax.adam(
        learning_rate, b1=b1, b2=b2, eps=eps
    ),
    "rmsprop": lambda learning_rate, decay=0.99, eps=1e-8: optax.rmsprop(
        learning_rate, decay=decay, eps=eps, eps_in_sqrt=False
    ),
    "adam_b1_only": _adam_b1_only,
    "adam_b2_only": lambda learning_rate, b2=0.999, eps=1e-8: optax.adam(
        learning_rate, b1=0.0, b2=b2, eps=eps
    ),
}

NAMES = tuple(_FACTORIES)


def get(name: str, learning_rate=1.0, **hyperparams) -> optax.GradientTransformation:
    """The optimizer `name` (see NAMES) with its learning rate injected into its state.

    learning_rate: a float or a (traced) scalar array; it is stored by `init`, so under
    `jax.vmap` over learning rates every lane keeps its own. Other keyword arguments override the
    fixed hyperparameters listed in the module docstring (e.g. b1=0.95 for adam).
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {list(NAMES)}")
    factory = _FACTORIES[name]
    try:
        factory(1.0, **hyperparams)
    except TypeError as err:
        raise ValueError(f"optimizer {name!r} does not take {sorted(hyperparams)}: {err}") from None
    inner = optax.inject_hyperparams(lambda learning_rate: factory(learning_rate, **hyperparams))
    return inner(learning_rate=learning_rate)


def learning_rate(opt_state) -> jax.Array:
    """The learning rate an optimizer state of `get` holds."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_state, value):
    """The optimizer state with its learning rate replaced by `value` (same dtype as before)."""
    old = learning_rate(opt_state)
    hyperparams = {**opt_state.hyperparams, "learning_rate": jnp.asarray(value, old.dtype)}
    return opt_state._replace(hyperparams=hyperparams)


class SwitchState(NamedTuple):
    count: jax.Array  # [] int32 updates taken
    first: Any  # the first optimizer's state (frozen from step `at` on)
    second: Any  # the second's, at its init until step `at`


def switch(
    first: optax.GradientTransformation, second: optax.GradientTransformation, at: int
) -> optax.GradientTransformation:
    """`first`'s updates for the first `at` steps, then `second`'s, which starts from its fresh
    init at step `at` (the immediate-derivative paper's control: train with Adam, switch to SGD /
    Adam / β2-only at the shift). A frozen model is `switch(tx, get("sgd", 0.0), at)`. Both
    updates are computed every step (a select, so the step stays one program under vmap)."""
    at = int(at)
    if at < 0:
        raise ValueError(f"the switch step must be >= 0, got {at}")

    def init(params):
        return SwitchState(jnp.zeros((), jnp.int32), first.init(params), second.init(params))

    def update(grads, state, params=None):
        before = state.count < at
        u1, s1 = first.update(grads, state.first, params)
        u2, s2 = second.update(grads, state.second, params)

        def pick(a, b):
            return jax.tree.map(lambda x, y: jnp.where(before, x, y), a, b)

        new = SwitchState(state.count + 1, pick(s1, state.first), pick(state.second, s2))
        return pick(u1, u2), new

    return optax.GradientTransformation(init, update)


__all__ = ["NAMES", "SwitchState", "get", "learning_rate", "switch", "with_learning_rate"]
