"""Leaf-by-leaf comparison of gradient pytrees, and the two oracles the lru_local tests share:
the sum of online steps and central finite differences per layer loss."""

import jax
import jax.numpy as jnp
import numpy as np

import lru_local


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


def online_sums(params, tokens, key, cfg):
    """(Σ_t L_t [depth], Σ_t ∇L_t like params) of `online_step` over tokens [B, T+1], step t's
    noise from fold_in(key, t) and loss_scale 1/T: what `local_grads` must equal."""
    steps = tokens.shape[1] - 1
    carry = lru_local.online_init(params, tokens.shape[0], cfg)
    loss_sum = jnp.zeros((cfg.depth,))
    grad_sum = jax.tree_util.tree_map(jnp.zeros_like, params)
    for t in range(steps):
        carry, step_losses, step_grads = lru_local.online_step(
            params,
            carry,
            tokens[:, t],
            tokens[:, t + 1],
            jax.random.fold_in(key, t),
            cfg,
            loss_scale=1.0 / steps,
        )
        loss_sum = loss_sum + step_losses
        grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, step_grads)
    return loss_sum, grad_sum, carry


def check_central_differences(
    params, grads, per_layer_losses, layer_of, *, rng, samples, h=1e-6, atol=0.0
):
    """(L^ℓ(θ + h e_k) − L^ℓ(θ − h e_k)) / 2h against grads at `samples` coordinates per leaf
    drawn by rng among those within 1e-3 of the leaf's largest |g|; layer_of(path) is the index
    ℓ of the loss that owns the leaf (None: skip it). Asserts |fd − g| ≤ 1e-5 |g| + atol and
    returns the parameter kinds checked (a layer's leaf name, else its top-level group)."""
    flat_params = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    checked = set()
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        layer = layer_of(path)
        if layer is None:
            continue
        name, group = jax.tree_util.keystr(path), path[0].key
        g = np.asarray(g)
        candidates = np.flatnonzero(np.abs(g) >= 1e-3 * np.max(np.abs(g)))
        for flat_index in rng.choice(candidates, size=min(samples, candidates.size), replace=False):
            index = np.unravel_index(flat_index, g.shape)
            leaf = flat_params[path]

            def loss_at(offset, path=path, leaf=leaf, index=index, layer=layer):
                shifted = jax.tree_util.tree_map_with_path(
                    lambda p, x: leaf.at[index].add(offset) if p == path else x, params
                )
                return float(per_layer_losses(shifted)[layer])

            fd = (loss_at(h) - loss_at(-h)) / (2 * h)
            assert abs(fd - g[index]) <= 1e-5 * abs(g[index]) + atol, (name, index, fd, g[index])
        checked.add(path[-1].key if group == "layers" else group)
    return checked
