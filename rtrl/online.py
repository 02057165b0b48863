"""Online training: one algorithm step and one optimizer update per stream element.

    run = make_online(algo, optax.adam(1e-3), shadow=rtrl_algo)
    state = run.init(key, params)
    state, records = run.scan(state, xs, ys)          # jax.lax.scan over [T] steps

Every record is prequential: the loss and prediction at step t are computed with θ_t before the
update θ_{t+1} = θ_t + optimizer(g_t). With a `shadow` algorithm (full RTRL), the shadow's state
is advanced with the same θ_t on the same inputs but its gradient is never applied, so the
recorded diagnostics compare the two estimates on one trajectory.

The diagnostics are over the recurrent parameters Θ = [W_rec | W_in | b] (`rtrl.cells.RECURRENT`)
only. The readout gradients ∂L_t/∂W_out = e_t h_tᵀ and ∂L_t/∂b_out = e_t are exact for every
algorithm (rtrl/interface.py), so including them adds the same ‖g_readout‖² to the inner product
and to both norms: the cosine is pulled towards 1 where ‖g_Θ‖ ≈ ‖g_Θ^sh‖ (sparse RTRL k=4 on
sine: 0.85 with the readout, 0.56 without) and can drop where the magnitudes differ. The readout
is recorded apart, as norms and a difference, to show that it is identical (to rounding), and
`cosine_with_readout` keeps the old all-parameter cosine for comparison.
Seeds are a `jax.vmap` over `init` keys and streams; nothing here is batched by hand.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rtrl import metrics
from rtrl.cells import READOUT, RECURRENT
from rtrl.interface import Algorithm


class OnlineState(NamedTuple):
    params: dict
    opt_state: Any
    algo_state: Any
    shadow_state: Any  # the shadow algorithm's state, or () without one


class StepRecord(NamedTuple):
    """One step's record; g_t is the algorithm's gradient, g_t^sh the shadow's (nan without one).

    Θ is [W_rec | W_in | b]; "readout" is (W_out, b_out).
    """

    loss: jax.Array  # [] L_t before the update
    prediction: jax.Array  # [n_out]
    grad_norm: jax.Array  # [] ‖g_t‖ over every parameter (the gradient the optimizer gets)
    cosine: jax.Array  # [] cos(g_t,Θ, g_t,Θ^sh), over Θ only
    magnitude_ratio: jax.Array  # [] ‖g_t,Θ‖ / ‖g_t,Θ^sh‖
    group_cosine: jax.Array  # [3] cos(g_t,p, g_t,p^sh) for p in RECURRENT order (W_rec, W_in, b)
    readout_norm: jax.Array  # [2] (‖g_t,W_out‖, ‖g_t,b_out‖)
    shadow_readout_norm: jax.Array  # [2] (‖g_t,W_out^sh‖, ‖g_t,b_out^sh‖)
    readout_difference: jax.Array  # [] ‖g_t,readout − g_t,readout^sh‖, 0 by construction
    cosine_with_readout: jax.Array  # [] cos(g_t, g_t^sh) over every parameter (misleading)
    grad_norms: dict  # {parameter name: [] ‖g_t,p‖}


class Online(NamedTuple):
    init: Callable[..., OnlineState]  # (key, params) -> OnlineState
    step: Callable[..., tuple[OnlineState, StepRecord]]  # (state, x_t, y_t)
    scan: Callable[..., tuple[OnlineState, StepRecord]]  # (state, xs [T,...], ys) -> records [T]


def _part(grads: dict, names) -> dict:
    missing = [name for name in names if name not in grads]
    if missing:
        raise ValueError(
            f"gradient diagnostics need the parameters {list(names)}; the gradient has "
            f"{sorted(grads)} (missing {missing})"
        )
    return {name: grads[name] for name in names}


def shadow_diagnostics(grads: dict, ref: dict) -> dict:
    """The StepRecord's comparison fields of a gradient `grads` against a reference `ref`.

    grads, ref: unbatched gradient pytrees with the cell's parameter names. Cosines and the ratio
    are over Θ = RECURRENT (and per group); the readout enters only as norms, its difference and
    the all-parameter `cosine_with_readout`. Shapes as in StepRecord.
    """
    theta, theta_ref = _part(grads, RECURRENT), _part(ref, RECURRENT)
    readout, readout_ref = _part(grads, READOUT), _part(ref, READOUT)
    return {
        "cosine": metrics.gradient_cosine(theta, theta_ref),
        "magnitude_ratio": metrics.magnitude_ratio(theta, theta_ref),
        "group_cosine": jnp.stack([metrics.gradient_cosine(grads[p], ref[p]) for p in RECURRENT]),
        "readout_norm": jnp.stack([metrics.tree_norm(grads[p]) for p in READOUT]),
        "shadow_readout_norm": jnp.stack([metrics.tree_norm(ref[p]) for p in READOUT]),
        "readout_difference": metrics.tree_norm(jax.tree.map(jnp.subtract, readout, readout_ref)),
        "cosine_with_readout": metrics.gradient_cosine(grads, ref),
    }


_NO_SHADOW = {  # StepRecord's comparison fields and their shapes, all nan without a shadow
    "cosine": (),
    "magnitude_ratio": (),
    "group_cosine": (len(RECURRENT),),
    "readout_norm": (len(READOUT),),
    "shadow_readout_norm": (len(READOUT),),
    "readout_difference": (),
    "cosine_with_readout": (),
}


def make_online(
    algo: Algorithm, optimizer: optax.GradientTransformation, shadow: Algorithm | None = None
) -> Online:
    def init(key, params):
        k_algo, k_shadow = jax.random.split(key)
        shadow_state = shadow.init(k_shadow, params) if shadow is not None else ()
        return OnlineState(params, optimizer.init(params), algo.init(k_algo, params), shadow_state)

    def step(state, x, y):
        algo_state, out = algo.step(state.params, state.algo_state, x, y)
        norm = metrics.tree_norm(out.grads)
        shadow_state = state.shadow_state
        if shadow is not None:
            shadow_state, ref = shadow.step(state.params, state.shadow_state, x, y)
            compared = shadow_diagnostics(out.grads, ref.grads)
        else:
            compared = {
                name: jnp.full(shape, jnp.nan, norm.dtype) for name, shape in _NO_SHADOW.items()
            }
        updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norms = {name: metrics.tree_norm(g) for name, g in out.grads.items()}
        record = StepRecord(out.loss, out.prediction, norm, **compared, grad_norms=grad_norms)
        return OnlineState(params, opt_state, algo_state, shadow_state), record

    def scan(state, xs, ys):
        return jax.lax.scan(lambda s, inputs: step(s, *inputs), state, (xs, ys))

    return Online(init, step, scan)
