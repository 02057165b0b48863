"""The protocol's measurements on one trained network and one fixed evaluation batch (x [B, …],
labels [B]), as pure jittable functions of (params, rule state):

- states: ‖h_l‖ (Frobenius over the batch) for l = 0..L, and the per-block growth
  ‖h_{l+1}‖ / ‖h_l‖ (diagnostic (a));
- g: ∂L/∂h_l for l = 1..L of the batch's mean loss L (its last norm is diagnostic (b));
- direction: mean pairwise cosine of the BP gradient over the blocks' parameters across
  `sub_batches` disjoint slices of the batch (diagnostic (c); our reading of "BP-grad direction":
  the parameter gradient Γ is measured against);
- gamma: Γ per layer (`rules.alignment`: embedding, blocks, head) and "flat" over the embedding
  and the blocks (the headline; the head is left out because every method gets it exactly), the
  method's update on this batch against BP's;
- credit: the method's local credit signal s_l at h_{l+1} (`CREDIT_SIGNALS`: BP's own gradient
  ∂L/∂h_{l+1}, DFA's e_T B_l), its cosine with ∂L/∂h_{l+1} per block ("deep cos"), and the
  perturbation correlation ρ of s_l with the true change of L under h_{l+1} + εv (deep ρ); the
  negative control ρ of a random vector, for every method (directions = 0: ρ is skipped, NaN).
`null_calibration` re-measures DFA's deep cosine and flat Γ with fresh random B_l (pitfall 4).
"""

from __future__ import annotations

from itertools import combinations

import jax
import jax.numpy as jnp

from fa_audit import metrics, rules
from fa_audit.models import accuracy, cross_entropy


def _rest(model, params, l, labels):
    """h_l -> L: the blocks l..L−1, the terminal norm and the head."""

    def loss(h):
        for j in range(l, len(params["blocks"])):
            h = model.next_state(j, params["blocks"][j], h)
        return cross_entropy(model.readout(params, h), labels)

    return loss


def _credited(grads):
    """The parameters whose credit differs between methods: the embedding and the blocks (every
    method gives the head its exact gradient, which would inflate a cosine that includes it)."""
    return {"embed": grads["embed"], "blocks": grads["blocks"]}


def _state_grads(model, params, hidden, labels) -> list:
    """∂L/∂h_l for l = 1..L, from the states hidden = [h_0, …, h_L]."""
    return [jax.grad(_rest(model, params, l, labels))(hidden[l]) for l in range(1, len(hidden))]


# (model, params, state, x, labels, ∂L/∂h_{1..L}) -> [s_l]; BP's credit is the gradient itself
CREDIT_SIGNALS = {
    "bp": lambda model, params, state, x, labels, grads_h: grads_h,
    "dfa": lambda model, params, state, x, labels, grads_h: rules.dfa_signals(
        model, params, state, x, labels
    ),
}


def measure(
    model,
    method: str,
    rule,
    params,
    state,
    x,
    labels,
    key,
    *,
    sub_batches=4,
    directions=64,
    eps=1e-3,
) -> dict:
    """Every per-epoch number of the protocol (see the module docstring); a dict of arrays."""
    logits, hidden, _ = model.forward(params, x)
    L = len(params["blocks"])
    norms = jnp.stack([jnp.linalg.norm(h.reshape(-1)) for h in hidden])
    grads_h = _state_grads(model, params, hidden, labels)
    bp_rule = rules.bp(model)
    _, ref = bp_rule.step(params, None, x, labels)
    _, own = rule.step(params, state, x, labels)
    gamma = rules.alignment(own.grads, ref.grads)
    n = x.shape[0] // sub_batches
    xs = x[: n * sub_batches].reshape(sub_batches, n, *x.shape[1:])
    ys = labels[: n * sub_batches].reshape(sub_batches, n)
    slices = jax.lax.map(lambda ab: bp_rule.step(params, None, *ab)[1].grads["blocks"], (xs, ys))
    pairs = list(combinations(range(sub_batches), 2))
    direction = jnp.mean(
        jnp.stack(
            [
                metrics.cosine(
                    jax.tree.map(lambda g, i=i: g[i], slices),
                    jax.tree.map(lambda g, j=j: g[j], slices),
                )
                for i, j in pairs
            ]
        )
    )
    out = {
        "accuracy": accuracy(logits, labels),
        "loss": cross_entropy(logits, labels),
        "h_norm": norms,
        "growth": norms[1:] / norms[:-1],
        "g_norm": jnp.stack([jnp.linalg.norm(g.reshape(-1)) for g in grads_h]),
        "direction": direction,
        "gamma_flat": metrics.cosine(_credited(own.grads), _credited(ref.grads)),
        "gamma": jnp.stack(list(gamma.values())),
    }
    k_rho, k_random = jax.random.split(key)
    rho_keys = jax.random.split(k_rho, L)
    random_keys = jax.random.split(k_random, L)

    def rho(l, signal, k):
        return metrics.perturbation_correlation(
            _rest(model, params, l + 1, labels), hidden[l + 1], signal, k, eps=eps, n=directions
        )

    nan = jnp.full((L,), jnp.nan, norms.dtype)
    out["rho_random"] = (
        nan
        if not directions
        else jnp.stack(
            [
                rho(
                    l,
                    jax.random.normal(random_keys[l], hidden[l + 1].shape, hidden[l + 1].dtype),
                    rho_keys[l],
                )
                for l in range(L)
            ]
        )
    )
    if method in CREDIT_SIGNALS:
        signals = CREDIT_SIGNALS[method](model, params, state, x, labels, grads_h)
        out["deep_cos"] = jnp.stack(
            [metrics.cosine(s, g) for s, g in zip(signals, grads_h, strict=True)]
        )
        out["deep_rho"] = (
            jnp.stack([rho(l, s, rho_keys[l]) for l, s in enumerate(signals)])
            if directions
            else nan
        )
    else:
        out["deep_cos"], out["deep_rho"] = nan, nan
    return out


def null_calibration(model, params, x, labels, key, *, draws: int = 20, penalty: float = 0.0):
    """DFA's deep cosine [draws, L] and flat Γ [draws] with `draws` fresh random B_l in place of
    the training-time ones (≈ 0 if the trained alignment is specific to its own B_l)."""
    rule = rules.dfa(model, penalty=penalty)
    _, hidden, _ = model.forward(params, x)
    grads_h = _state_grads(model, params, hidden, labels)
    _, ref = rules.bp(model).step(params, None, x, labels)

    def one(k):
        state = rule.init(k, params)
        signals = rules.dfa_signals(model, params, state, x, labels)
        cos = jnp.stack([metrics.cosine(s, g) for s, g in zip(signals, grads_h, strict=True)])
        _, out = rule.step(params, state, x, labels)
        return cos, metrics.cosine(_credited(out.grads), _credited(ref.grads))

    return jax.lax.map(one, jax.random.split(key, draws))


def evaluate(model, params, x, labels, batch: int = 1000) -> jax.Array:
    """Accuracy over a whole split, `batch` samples at a time (N divisible by batch)."""
    n = x.shape[0]
    if n % batch:
        raise ValueError(f"{n} samples do not split into batches of {batch}")
    xs = x.reshape(n // batch, batch, *x.shape[1:])
    ys = labels.reshape(n // batch, batch)
    hits = jax.lax.map(
        lambda b: jnp.sum(jnp.argmax(model.forward(params, b[0])[0], -1) == b[1]), (xs, ys)
    )
    return jnp.sum(hits) / n
