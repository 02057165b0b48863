"""Two independent references for the trace engine's local gradients.

* `local_grads_autodiff`: `jax.grad` of the stop-gradded local objective Σ_ℓ L^ℓ through the whole
  sequence (reverse mode over time; the exactness oracle).
* `local_grads_jvp`: generic forward mode. The state recursion s_t = f(θ_rec, s_{t-1}, u_t) is
  pushed forward with `jax.linearize` (a jvp) along a stacked set of tangent directions in the
  stored-parameter space; no sensitivity recursion is derived by hand. Because unit i's state
  depends on row i of the recurrent parameters only (the diagonal structure), directions are
  compressed by column (Curtis-Powell-Reid seeding): one tangent per column j of B_re / B_im sets
  B[:, j] = 1 for all units at once, plus one for nu_log and one for theta, K = 2H + 2 tangents.
  Unit i's entry of the tangent state in direction k is then ∂s_i/∂θ_{i,k}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lru_local import eligibility, model, validation
from lru_local.config import Config


def _all_noise(key, batch, steps, cfg, dtype):
    """σ·ε for every step, exactly as the trace engine draws it: [L-1, B, T-1, H]."""
    per_step = eligibility.denoise_noise_at(key, jnp.arange(steps), batch, cfg, dtype)
    return jnp.transpose(per_step, (1, 2, 0, 3))


def local_objective(params, tokens, noise, activation: str = "none"):
    """Σ_ℓ L^ℓ with stop-gradded layer inputs: returns (total, per-layer losses [L])."""
    ys, _, _ = model.stack_forward(params, tokens[:, :-1], local=True, activation=activation)
    next_tokens = tokens[:, 1:]
    target_embedding = model.embed(params, next_tokens)
    losses = [
        jnp.mean(model.denoise_loss(head, y, target_embedding + eps))
        for head, y, eps in zip(params["heads"], ys[:-1], noise, strict=True)
    ]
    losses.append(jnp.mean(model.task_loss(params["decoder"], ys[-1], next_tokens)))
    losses = jnp.stack(losses)
    return jnp.sum(losses), losses


def local_grads_autodiff(params: dict, tokens: jax.Array, key: jax.Array, cfg: Config):
    """Reference: jax.grad of Σ_ℓ L^ℓ (stop-gradded inputs). Same returns as `local_grads`."""
    validation.check_sequence_call(params, tokens, cfg, key)
    return _autodiff_jit(params, tokens, key, cfg)


@jax.jit(static_argnames="cfg")
def _autodiff_jit(params, tokens, key, cfg):
    batch, length = tokens.shape
    noise = _all_noise(key, batch, length - 1, cfg, params["embed"].dtype)
    grads, losses = jax.grad(
        lambda p: local_objective(p, tokens, noise, cfg.activation), has_aux=True
    )(params)
    return losses, grads


def _tangent_directions(n_state: int, n_model: int, dtype) -> dict:
    """K = 2H + 2 stacked tangents of {nu_log, theta, B_re, B_im}, one column each."""
    k = 2 * n_model + 2
    eye = jnp.eye(k, dtype=dtype)
    ones_n = jnp.ones((n_state,), dtype)
    return {
        "nu_log": eye[:, 0, None] * ones_n,
        "theta": eye[:, 1, None] * ones_n,
        "B_re": eye[:, None, 2 : 2 + n_model] * ones_n[None, :, None],
        "B_im": eye[:, None, 2 + n_model :] * ones_n[None, :, None],
    }


def _decompress(g: jax.Array, n_model: int) -> dict:
    """Per-direction, per-unit gradients g [K, N] -> {nu_log [N], theta [N], B_re/B_im [N, H]}."""
    return {
        "nu_log": g[0],
        "theta": g[1],
        "B_re": g[2 : 2 + n_model].T,
        "B_im": g[2 + n_model :].T,
    }


def _jvp_engine(cfg: Config, dtype) -> eligibility.RecurrentEngine:
    """Generic forward mode: the layer state is (s_t, tangents ds_t [K, B, N])."""
    directions = _tangent_directions(cfg.d_state, cfg.d_model, dtype)

    def init(batch, cfg, dtype):
        cdtype = jnp.result_type(dtype, jnp.complex64)
        k = 2 * cfg.d_model + 2
        return jnp.zeros((batch, cfg.d_state), cdtype), jnp.zeros((k, batch, cfg.d_state), cdtype)

    def advance(layer, state, u, s_known):
        del s_known  # recomputed below by the primal of the linearisation
        s_prev, tangents = state
        rec = {name: layer[name] for name in ("nu_log", "theta", "B_re", "B_im")}

        def recurrence(r, sp):
            return model.eigenvalues(r) * sp + model.input_projection(r, u)

        s, push = jax.linearize(recurrence, rec, s_prev)
        return s, jax.vmap(push)(directions, tangents)

    def contract(layer, state, delta):
        # Real chain rule dL = <∂L/∂Re s, Re ds> + <∂L/∂Im s, Im ds>, per unit and direction.
        _, ds = state
        per_direction = jnp.sum(delta.real * ds.real + delta.imag * ds.imag, axis=1)  # [K, N]
        return _decompress(per_direction, cfg.d_model)

    return eligibility.RecurrentEngine(init, advance, lambda state: state[0], contract)


def local_grads_jvp(params: dict, tokens: jax.Array, key: jax.Array, cfg: Config):
    """Reference: generic forward-mode gradients (jax.linearize along K compressed tangents).

    Costs K = 2H + 2 tangent propagations per step (O(K·N·H) per row): a correctness oracle and
    the baseline the hand-derived traces are benchmarked against. Same returns as `local_grads`.
    """
    validation.check_sequence_call(params, tokens, cfg, key)
    return _jvp_jit(params, tokens, key, cfg)


@jax.jit(static_argnames="cfg")
def _jvp_jit(params, tokens, key, cfg):
    engine = _jvp_engine(cfg, params["embed"].dtype)
    return eligibility.scan_local_grads(params, tokens, key, cfg, engine)
