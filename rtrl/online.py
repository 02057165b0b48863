"""Online training: one algorithm step and one optimizer update per stream element.

    run = make_online(algo, optax.adam(1e-3), shadow=rtrl_algo)
    state = run.init(key, params)
    state, records = run.scan(state, xs, ys)          # jax.lax.scan over [T] steps

Every record is prequential: the loss and prediction at step t are computed with θ_t before the
update θ_{t+1} = θ_t + optimizer(g_t). With a `shadow` algorithm (full RTRL), the shadow's state
is advanced with the same θ_t on the same inputs but its gradient is never applied, so the
recorded gradient cosine and magnitude ratio compare the two estimates on one trajectory.
Seeds are a `jax.vmap` over `init` keys and streams; nothing here is batched by hand.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rtrl.interface import Algorithm, tree_norm


class OnlineState(NamedTuple):
    params: dict
    opt_state: Any
    algo_state: Any
    shadow_state: Any  # the shadow algorithm's state, or () without one


class StepRecord(NamedTuple):
    loss: jax.Array  # [] L_t before the update
    prediction: jax.Array  # [n_out]
    grad_norm: jax.Array  # [] ‖g_t‖
    cosine: jax.Array  # [] cos(g_t, g_t^shadow), nan without a shadow
    magnitude_ratio: jax.Array  # [] ‖g_t‖ / ‖g_t^shadow‖, nan without a shadow


class Online(NamedTuple):
    init: Callable[..., OnlineState]  # (key, params) -> OnlineState
    step: Callable[..., tuple[OnlineState, StepRecord]]  # (state, x_t, y_t)
    scan: Callable[..., tuple[OnlineState, StepRecord]]  # (state, xs [T,...], ys) -> records [T]


def _dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def make_online(
    algo: Algorithm, optimizer: optax.GradientTransformation, shadow: Algorithm | None = None
) -> Online:
    def init(key, params):
        k_algo, k_shadow = jax.random.split(key)
        shadow_state = shadow.init(k_shadow, params) if shadow is not None else ()
        return OnlineState(params, optimizer.init(params), algo.init(k_algo, params), shadow_state)

    def step(state, x, y):
        algo_state, out = algo.step(state.params, state.algo_state, x, y)
        norm = tree_norm(out.grads)
        nan = jnp.full((), jnp.nan, norm.dtype)
        cosine, ratio, shadow_state = nan, nan, state.shadow_state
        if shadow is not None:
            shadow_state, ref = shadow.step(state.params, state.shadow_state, x, y)
            ref_norm = tree_norm(ref.grads)
            cosine = _dot(out.grads, ref.grads) / (norm * ref_norm)
            ratio = norm / ref_norm
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        record = StepRecord(out.loss, out.prediction, norm, cosine, ratio)
        return OnlineState(params, opt_state, algo_state, shadow_state), record

    def scan(state, xs, ys):
        return jax.lax.scan(lambda s, inputs: step(s, *inputs), state, (xs, ys))

    return Online(init, step, scan)
