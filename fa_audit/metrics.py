"""Gradient-alignment metrics that measure what they claim (the audit paper's App. B pitfalls).

- `cosine(a, b)`: cos(a, b) = ⟨a, b⟩ / (‖a‖ ‖b‖) over every entry of two arrays or pytrees, exact
  at any scale: each side is divided by its largest |entry| before anything is squared, so a
  reference gradient of norm 1e-30 gives the same cosine as one of norm 1 (float32 and float64),
  and nothing is clamped (torch's cosine_similarity divides by max(‖a‖‖b‖, 1e-8), pitfall 2).
  A zero vector has no direction: the cosine is nan, never 1 (pitfall 7) or 0.
- `per_layer_cosine(g, ref)`: {layer: cosine}, never aggregated silently (pitfall 6).
- `aggregate_cosine(g, ref, strategy)`: the aggregation across layers, samples and batches is an
  explicit argument (pitfall 5), one of STRATEGIES:
    "flat"         cosine of the batch-mean gradients, all layers concatenated
    "layer_mean"   mean over layers of each layer's cosine of batch-mean gradients
    "sample_mean"  mean over samples of the per-sample cosine (all layers concatenated)
    "batch_mean"   mean over mini-batches of `batch_size` samples of the "flat" cosine
  g and ref are {layer: [N, ...]} per-sample gradients.
- `row_norms(x)`: the L2 norm of each row, `jnp.linalg.norm(x, axis=-1)`; the positional
  `jnp.linalg.norm(x, -1)` is ord = −1 (a matrix norm of the whole array), pitfall 1.
- `perturbation_correlation(loss, h, g, key, eps, n)`: Pearson ρ between the predicted change
  ⟨g, v⟩ and the true change L(h + v) − L(h) over n random directions v of norm ε‖h‖; +1 when g
  is the gradient of L at h (the paper's positive control: +0.997), ≈ 0 for an unrelated g
  (+0.006).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

STRATEGIES = ("flat", "layer_mean", "sample_mean", "batch_mean")


def _flat(tree) -> jax.Array:
    leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)]
    if not leaves:
        raise ValueError("cosine of an empty pytree")
    return jnp.concatenate(leaves)


def cosine(a, b) -> jax.Array:
    """cos(a, b) over every entry of arrays or pytrees of the same structure (see module)."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(
            f"cosine needs two trees of one structure, got {jax.tree.structure(a)} and "
            f"{jax.tree.structure(b)}"
        )
    x, y = _flat(a), _flat(b)
    if x.shape != y.shape:
        raise ValueError(f"cosine needs equal sizes, got {x.shape} and {y.shape}")
    sx, sy = jnp.max(jnp.abs(x)), jnp.max(jnp.abs(y))
    x = x / jnp.where(sx > 0, sx, 1.0)  # entries in [−1, 1]: their squares cannot underflow to 0
    y = y / jnp.where(sy > 0, sy, 1.0)  # unless they are 0 relative to the largest
    value = jnp.dot(x, y) / (jnp.linalg.norm(x) * jnp.linalg.norm(y))
    return jnp.where((sx > 0) & (sy > 0), value, jnp.nan)


def per_layer_cosine(g: dict, ref: dict) -> dict:
    """{layer: cosine(g[layer], ref[layer])}; the layers must match."""
    if set(g) != set(ref):
        raise ValueError(f"layers differ: {sorted(g)} vs {sorted(ref)}")
    return {layer: cosine(g[layer], ref[layer]) for layer in g}


def aggregate_cosine(g: dict, ref: dict, strategy: str, batch_size: int | None = None):
    """One number from per-sample gradients {layer: [N, ...]} by the named strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown aggregation {strategy!r}; choose one of {STRATEGIES}")
    n = {x.shape[0] for x in jax.tree.leaves((g, ref))}
    if len(n) != 1:
        raise ValueError(f"every layer needs the same number of samples, got {sorted(n)}")
    (n,) = n

    def mean(tree):
        return jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)

    if strategy == "flat":
        return cosine(mean(g), mean(ref))
    if strategy == "layer_mean":
        return jnp.mean(jnp.stack(list(per_layer_cosine(mean(g), mean(ref)).values())))
    if strategy == "sample_mean":
        return jnp.mean(jax.vmap(cosine)(g, ref))
    if not batch_size or n % batch_size:
        raise ValueError(f"batch_mean needs a batch_size dividing N = {n}, got {batch_size}")

    def batched(tree):
        return jax.tree.map(lambda x: x.reshape(n // batch_size, batch_size, *x.shape[1:]), tree)

    return jnp.mean(jax.vmap(lambda a, b: cosine(mean(a), mean(b)))(batched(g), batched(ref)))


def row_norms(x: jax.Array) -> jax.Array:
    """‖x[..., i, :]‖₂ per row, shape x.shape[:-1]."""
    return jnp.linalg.norm(x, axis=-1)


def perturbation_correlation(loss, h, g, key, eps: float = 1e-3, n: int = 64) -> jax.Array:
    """Pearson ρ over n random directions v of (⟨g, v⟩, L(h + v) − L(h)), ‖v‖ = ε ‖h‖; h and g
    arrays of one shape, loss a scalar function of h.

    ε is relative to ‖h‖: an absolute step is lost to float32 rounding of L on a large state (a
    whole evaluation batch of a residual stream: ‖h‖ ~ 1e3–1e5, and ⟨g, v⟩ shrinks as
    1/sqrt(h.size)), which drives even the true gradient's ρ towards 0."""
    if h.shape != g.shape:
        raise ValueError(f"h and g need one shape, got {h.shape} and {g.shape}")
    v = jax.random.normal(key, (n, *h.shape), h.dtype)
    scale = eps * jnp.linalg.norm(h.reshape(-1)) / jnp.linalg.norm(v.reshape(n, -1), axis=1)
    v = v * scale.reshape(n, *([1] * h.ndim))
    base = loss(h)
    predicted = jnp.sum((v * g).reshape(n, -1), axis=1)
    # a few directions at a time: n copies of a large h would not fit at once
    actual = jax.lax.map(lambda d: loss(h + d) - base, v, batch_size=min(n, 8))
    return jnp.corrcoef(predicted, actual)[0, 1]
