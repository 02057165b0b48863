"""Two independent references for the trace engine's local gradients.

* `local_grads_autodiff`: `jax.grad` of the stop-gradded local objective Σ_ℓ L^ℓ through the whole
  sequence (reverse mode over time; the exactness oracle).
* `local_grads_jvp`: generic forward mode. The state recursion s_t = f(θ_rec, s_{t-1}, u_t) is
  pushed forward with `jax.linearize` (a jvp) along a stacked set of tangent directions in the
  stored-parameter space; no sensitivity recursion is derived by hand. Because unit i's state
  depends on row i of the recurrent parameters only (the diagonal structure), directions are
  compressed by column (Curtis-Powell-Reid seeding): one tangent per column j of B_re / B_im sets
  B[:, j] = 1 for all units at once, plus one for nu_log, one for theta (and one for gamma_log),
  K = 2H + 2 (+1) tangents. Unit i's entry of the tangent state in direction k is then
  ∂s_i/∂θ_{i,k}. A learned embedding adds V·H uncompressed tangents of the input table Ê.
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


def local_objective(params, tokens, noise, arch="none"):
    """Σ_ℓ L^ℓ with stop-gradded inputs of layers ℓ ≥ 2: returns (total, per-layer losses [L]).

    arch: a Config or Config.activation. Layer 1's input E[x_t] carries a gradient to E only if
    the embedding is learned; the denoising targets are stop-gradded either way.
    """
    cfg = model.as_config(arch)
    ys, us, _ = model.stack_forward(params, tokens[:, :-1], local=True, arch=cfg)
    next_tokens = tokens[:, 1:]
    target_embedding = model.target_embedding(params, next_tokens, cfg)
    features = [model.head_features(u, y, cfg) for u, y in zip(us, ys, strict=True)]
    losses = [
        jnp.mean(model.denoise_loss(head, h, target_embedding + eps))
        for head, h, eps in zip(params["heads"], features[:-1], noise, strict=True)
    ]
    losses.append(jnp.mean(model.task_loss(params["decoder"], features[-1], next_tokens)))
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
    grads, losses = jax.grad(lambda p: local_objective(p, tokens, noise, cfg), has_aux=True)(params)
    return losses, grads


RECURRENT_KEYS = ("nu_log", "theta", "B_re", "B_im", "gamma_log")


def _tangent_directions(n_state: int, n_model: int, dtype, gamma: bool = False) -> dict:
    """K = 2H + 2 (+1 with a trainable γ) stacked tangents of the recurrent leaves, one column
    each: nu_log, theta, the H columns of B_re, of B_im [, gamma_log]."""
    k = 2 * n_model + 2 + int(gamma)
    eye = jnp.eye(k, dtype=dtype)
    ones_n = jnp.ones((n_state,), dtype)
    directions = {
        "nu_log": eye[:, 0, None] * ones_n,
        "theta": eye[:, 1, None] * ones_n,
        "B_re": eye[:, None, 2 : 2 + n_model] * ones_n[None, :, None],
        "B_im": eye[:, None, 2 + n_model : 2 + 2 * n_model] * ones_n[None, :, None],
    }
    if gamma:
        directions["gamma_log"] = eye[:, 2 + 2 * n_model, None] * ones_n
    return directions


def _decompress(g: jax.Array, n_model: int) -> dict:
    """Per-direction, per-unit gradients g [K, N] -> {nu_log [N], theta [N], B_re/B_im [N, H]
    [, gamma_log [N]]}."""
    out = {
        "nu_log": g[0],
        "theta": g[1],
        "B_re": g[2 : 2 + n_model].T,
        "B_im": g[2 + n_model : 2 + 2 * n_model].T,
    }
    if g.shape[0] > 2 + 2 * n_model:
        out["gamma_log"] = g[2 + 2 * n_model]
    return out


def _jvp_engine(cfg: Config, dtype) -> eligibility.RecurrentEngine:
    """Generic forward mode: the layer state is (s_t, tangents ds_t [K, B, N]).

    The owner of a learned embedding also pushes V·H tangents of the input table Ê (one per
    entry, uncompressed: every unit's state depends on every row it has read), so its state is
    (s_t, ds_t [K + V·H, B, N]); ∂L/∂Ê sums their contraction over units.
    """
    H, V = cfg.d_model, cfg.vocab
    directions = _tangent_directions(cfg.d_state, H, dtype, cfg.gamma == "trainable")
    k_rec = 2 * H + 2 + int(cfg.gamma == "trainable")

    def init(batch, cfg, dtype, owns_embedding=False):
        cdtype = jnp.result_type(dtype, jnp.complex64)
        k = k_rec + (V * H if owns_embedding else 0)
        return jnp.zeros((batch, cfg.d_state), cdtype), jnp.zeros((k, batch, cfg.d_state), cdtype)

    def advance(layer, state, n, s_known, x=None, table=None):
        del s_known  # recomputed below by the primal of the linearisation
        s_prev, tangents = state
        rec = {name: layer[name] for name in RECURRENT_KEYS if name in layer}
        if table is None:

            def recurrence(r, sp):
                return model.eigenvalues(r) * sp + model.input_projection(r, n)

            s, push = jax.linearize(recurrence, rec, s_prev)
            return s, jax.vmap(push)(directions, tangents)

        def recurrence_with_table(r, tab, sp):
            return model.eigenvalues(r) * sp + model.input_projection(r, tab[x])

        s, push = jax.linearize(recurrence_with_table, rec, table, s_prev)
        n_table = V * H
        rec_dirs = jax.tree_util.tree_map(
            lambda d: jnp.concatenate([d, jnp.zeros((n_table, *d.shape[1:]), d.dtype)]),
            directions,
        )
        table_dirs = jnp.concatenate(
            [jnp.zeros((k_rec, V, H), dtype), jnp.eye(n_table, dtype=dtype).reshape(-1, V, H)]
        )
        return s, jax.vmap(push)(rec_dirs, table_dirs, tangents)

    def contract(layer, state, delta):
        # Real chain rule dL = <∂L/∂Re s, Re ds> + <∂L/∂Im s, Im ds>, per unit and direction.
        _, ds = state
        per_direction = jnp.sum(delta.real * ds.real + delta.imag * ds.imag, axis=1)  # [K, N]
        raw = {"rec": per_direction[:k_rec]}
        if ds.shape[0] > k_rec:
            raw["table"] = jnp.sum(per_direction[k_rec:], axis=1)  # [V·H]
        return raw

    def finish(layer, raw):
        grads = _decompress(raw["rec"], H)
        if "table" in raw:
            grads["embed_input"] = raw["table"].reshape(V, H)
        return grads

    return eligibility.RecurrentEngine(init, advance, lambda state: state[0], contract, finish)


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
