"""Unbiased low-rank estimators of M: UORO (rank one) and KF-RTRL (Kronecker factored).

Both keep an estimate whose expectation over their random signs equals the RTRL tensor M_t for
fixed parameters, at O(n²) (UORO) or O(n³) (KF-RTRL) cost per step. The carry is flattened to a
state vector s (n for the vanilla RNN, 2n = [h; c] for the LSTM) where a formula needs one.
"""

from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from rtrl import cells as cells_lib
from rtrl import losses
from rtrl.interface import Algorithm, StepOutput, assemble, check_step_shapes, readout_step

EPS = 1e-7


def _transition(cell, params, carry, x):
    return cell.core(cells_lib.preactivation(params, cell.hidden(carry), x), carry)


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


class UoroState(NamedTuple):
    carry: object  # s_{t-1}
    s_tilde: object  # like carry: s̃
    theta_tilde: dict  # like the recurrent params {W_rec, W_in, b}: θ̃
    key: jax.Array  # PRNG key for the sign vectors ν


def uoro(cell, loss="mse", eps=EPS):
    """UORO (Tallec & Ollivier 2018): M_t ≈ s̃_t θ̃_tᵀ with, for ν ~ Rademacher,

        s̃_t = ρ0 (∂s_t/∂s_{t-1}) s̃_{t-1} + ρ1 ν
        θ̃_t = θ̃_{t-1} / ρ0 + (νᵀ ∂s_t/∂θ) / ρ1
        ρ0 = sqrt(‖θ̃_{t-1}‖ / ‖(∂s_t/∂s_{t-1}) s̃_{t-1}‖) + ε,  ρ1 = sqrt(‖νᵀ ∂s_t/∂θ‖ / ‖ν‖) + ε

    (the variance-reducing scalings of their Alg. 1); ∂L_t/∂θ ≈ (∂L_t/∂s_t · s̃_t) θ̃_t. The
    tangent ∂s_t/∂s_{t-1} s̃ is one jvp and νᵀ ∂s_t/∂θ one vjp, so the cost is O(n²) per step.
    """
    cells_lib.require(cell, cells_lib.FACTORISED, "uoro")
    loss_fn = losses.get(loss)

    def init(key, params):
        dtype = params["W_rec"].dtype
        carry = cell.initial_carry(dtype)
        zeros = jax.tree.map(jnp.zeros_like, carry)
        rec = {name: jnp.zeros_like(params[name]) for name in cells_lib.RECURRENT}
        return UoroState(carry, zeros, rec, key)

    def step(params, state, x, y):
        target = losses.as_target(y)
        check_step_shapes(cell, x, target)
        key, sub = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(state.carry)
        subs = jax.random.split(sub, len(leaves))
        signs = [
            jax.random.rademacher(kk, leaf.shape, leaf.dtype)
            for kk, leaf in zip(subs, leaves, strict=True)
        ]
        nu = jax.tree.unflatten(treedef, signs)
        carry, Js = jax.jvp(
            lambda c: _transition(cell, params, c, x), (state.carry,), (state.s_tilde,)
        )
        rec = {name: params[name] for name in cells_lib.RECURRENT}
        _, vjp = jax.vjp(lambda r: _transition(cell, {**params, **r}, state.carry, x), rec)
        (nu_F,) = vjp(nu)
        rho0 = jnp.sqrt(_norm(state.theta_tilde) / (_norm(Js) + eps)) + eps
        rho1 = jnp.sqrt(_norm(nu_F) / (_norm(nu) + eps)) + eps
        s_tilde = jax.tree.map(lambda a, b: rho0 * a + rho1 * b, Js, nu)
        theta_tilde = jax.tree.map(lambda a, b: a / rho0 + b / rho1, state.theta_tilde, nu_F)
        pred, step_loss, dh, readout_grads = readout_step(
            cell, loss_fn, params, cell.hidden(carry), target
        )
        scale = jnp.vdot(dh, cell.hidden(s_tilde))
        grads = {**jax.tree.map(lambda a: scale * a, theta_tilde), **readout_grads}
        return UoroState(carry, s_tilde, theta_tilde, key), StepOutput(grads, step_loss, pred)

    return Algorithm("uoro", init, step)


class KfState(NamedTuple):
    carry: object  # s_{t-1}
    u: jax.Array  # [m] right Kronecker factor
    A: jax.Array  # [S, R] left factor, S = total carry size
    key: jax.Array


def kf_rtrl(cell, loss="mse", eps=EPS):
    """KF-RTRL (Mujika, Meier & Steger 2018): ∂s_t/∂Θ[r, c] ≈ A_t[s, r] u_t[c]. With
    H_t = ∂s_t/∂s_{t-1} [S, S], D_t = ∂s_t/∂z_t [S, R] and v_t = [h_{t-1}; x_t; 1], the exact
    update H_t (A ⊗ u) + D_t ⊗ v_t is a sum of two Kronecker products, replaced by the unbiased
    rank-one mix with random signs c1, c2 ∈ {±1}:

        u_t = c1 p1 u_{t-1} + c2 p2 v_t,    A_t = c1 H_t A_{t-1} / p1 + c2 D_t / p2
        p1 = sqrt(‖H_t A_{t-1}‖ / ‖u_{t-1}‖),   p2 = sqrt(‖D_t‖ / ‖v_t‖)

    ∂L_t/∂Θ ≈ (∂L_t/∂s_tᵀ A_t) ⊗ u_t. Cost O(S² R), i.e. O(n³) for the vanilla RNN.
    """
    cells_lib.require(cell, cells_lib.FACTORISED, "kf_rtrl")
    loss_fn = losses.get(loss)
    R, m = cell.n_rows, cell.n_hidden + cell.n_in + 1

    def init(key, params):
        dtype = params["W_rec"].dtype
        carry = cell.initial_carry(dtype)
        S = sum(leaf.size for leaf in jax.tree.leaves(carry))
        return KfState(carry, jnp.zeros((m,), dtype), jnp.zeros((S, R), dtype), key)

    def step(params, state, x, y):
        target = losses.as_target(y)
        check_step_shapes(cell, x, target)
        flat, unravel = jax.flatten_util.ravel_pytree(state.carry)
        h_prev = cell.hidden(state.carry)
        v = cells_lib.inputs_vector(h_prev, x)
        z = cells_lib.theta(params) @ v

        def transition_flat(s_flat):
            return jax.flatten_util.ravel_pytree(_transition(cell, params, unravel(s_flat), x))[0]

        H = jax.jacfwd(transition_flat)(flat)  # [S, S]
        D = jax.jacfwd(lambda zz: jax.flatten_util.ravel_pytree(cell.core(zz, state.carry))[0])(z)
        carry = cell.core(z, state.carry)
        HA = H @ state.A
        p1 = jnp.sqrt((jnp.linalg.norm(HA) + eps) / (jnp.linalg.norm(state.u) + eps))
        p2 = jnp.sqrt((jnp.linalg.norm(D) + eps) / (jnp.linalg.norm(v) + eps))
        key, sub = jax.random.split(state.key)
        c1, c2 = jax.random.rademacher(sub, (2,), v.dtype)
        u = c1 * p1 * state.u + c2 * p2 * v
        A = c1 * HA / p1 + c2 * D / p2
        pred, step_loss, dh, readout_grads = readout_step(
            cell, loss_fn, params, cell.hidden(carry), target
        )
        ds = jax.flatten_util.ravel_pytree(_cotangent_of_hidden(cell, carry, dh))[0]
        g_theta = jnp.outer(ds @ A, u)
        out = StepOutput(assemble(cell, g_theta, readout_grads), step_loss, pred)
        return KfState(carry, u, A, key), out

    return Algorithm("kf_rtrl", init, step)


def _cotangent_of_hidden(cell, carry, dh):
    """∂L/∂s from ∂L/∂h (hidden is a selection, so the rest of the carry gets zeros)."""
    _, vjp = jax.vjp(cell.hidden, carry)
    return vjp(dh)[0]
