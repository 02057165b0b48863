"""Metrics for online streams and gradient diagnostics; pure functions returning jnp arrays.

Time is the last axis of every per-step array, so leading axes (seeds, configs) broadcast:
losses [..., T] -> metric [...]. Loss traces are the online (prequential) per-step losses, each
computed on step t before the update that uses step t.

Pytree and matrix diagnostics (`tree_norm`, `gradient_cosine`, `magnitude_ratio`,
`jacobian_spectrum`) take one unbatched input; callers `jax.vmap` them over seeds or steps. They
are the project's one pytree norm and cosine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _window(T: int, start: int, stop: int) -> tuple[int, int]:
    """Resolve [start, stop) like Python slicing on range(T); an empty window is an error."""
    r = range(T)[start:stop]
    if len(r) == 0:
        raise ValueError(f"empty time window [{start}, {stop}) for a stream of length {T}")
    return r.start, r.stop


def window_mean(values, start: int, stop: int) -> jax.Array:
    """mean_{t ∈ [start, stop)} values[..., t]: [..., T] -> [...]; negative indices as in slices."""
    values = jnp.asarray(values)
    lo, hi = _window(values.shape[-1], start, stop)
    return jnp.mean(values[..., lo:hi], axis=-1)


def pre_post_mse(losses, shift: int, window: int = 500) -> tuple[jax.Array, jax.Array]:
    """Loss level before a shift and the adapted level at the end of the stream.

    pre  = mean_{t ∈ [shift − window, shift)} ℓ_t
    post = mean_{t ∈ [T − window, T)} ℓ_t
    losses: online (prequential) per-step losses [..., T], each computed before its update.
    Returns (pre, post), each [...]. Both windows must lie inside the stream, and the post window
    after the shift.
    """
    losses = jnp.asarray(losses)
    T = losses.shape[-1]
    if not (window >= 1 and shift - window >= 0 and shift <= T - window):
        raise ValueError(
            f"need window >= 1, shift - window >= 0 and shift <= T - window; "
            f"got shift={shift}, window={window}, T={T}"
        )
    return window_mean(losses, shift - window, shift), window_mean(losses, T - window, T)


def first_shift_post(losses, shift: int, next_shift: int, window: int = 500) -> jax.Array:
    """Adapted loss level after `shift` in a multi-regime stream: the end of that regime.

    post = mean_{t ∈ [next_shift − window, next_shift)} ℓ_t, losses [..., T] -> [...].
    The window must lie inside the regime [shift, next_shift).
    """
    losses = jnp.asarray(losses)
    if not (window >= 1 and shift <= next_shift - window and next_shift <= losses.shape[-1]):
        raise ValueError(
            f"need window >= 1 and shift <= next_shift - window <= T - window; got shift={shift}, "
            f"next_shift={next_shift}, window={window}, T={losses.shape[-1]}"
        )
    return window_mean(losses, next_shift - window, next_shift)


def gap_recovery(l_traces, l_k, l_full) -> jax.Array:
    """Fraction of the log-loss gap between traces-only and full RTRL that a method closes.

    R = (log L_traces − log L_k) / (log L_traces − log L_full), elementwise (1.0 = 100%,
    0 = no better than traces, > 1 = better than full).
    """
    log_traces = jnp.log(jnp.asarray(l_traces))
    return (log_traces - jnp.log(jnp.asarray(l_k))) / (log_traces - jnp.log(jnp.asarray(l_full)))


def coefficient_of_variation(x, axis: int = -1) -> jax.Array:
    """CV = std(x) / mean(x) along `axis`, std with ddof = 0."""
    x = jnp.asarray(x)
    return jnp.std(x, axis=axis) / jnp.mean(x, axis=axis)


def weighted_mean(values, weights) -> jax.Array:
    """Σ_t w_t v_t / Σ_t w_t over the last axis: values, weights [..., T] -> [...]."""
    values, weights = jnp.asarray(values), jnp.asarray(weights)
    return jnp.sum(values * weights, axis=-1) / jnp.sum(weights, axis=-1)


def copy_accuracy(logits, targets_onehot, weights, window_steps: int | None = None) -> jax.Array:
    """Fraction of scored steps whose argmax logit is the target class.

    acc = Σ_t w_t 1[argmax_c logits_{t,c} = argmax_c y_{t,c}] / Σ_t w_t over the last
    `window_steps` steps (all steps if None). logits, targets_onehot [..., T, C];
    weights [..., T] -> [...].
    """
    logits, targets_onehot = jnp.asarray(logits), jnp.asarray(targets_onehot)
    correct = jnp.argmax(logits, axis=-1) == jnp.argmax(targets_onehot, axis=-1)  # [..., T]
    weights = jnp.asarray(weights)
    if window_steps is not None:
        if window_steps < 1:
            raise ValueError(f"window_steps must be >= 1 or None, got {window_steps}")
        correct, weights = correct[..., -window_steps:], weights[..., -window_steps:]
    return weighted_mean(correct.astype(weights.dtype), weights)


def _tree_inner(a, b) -> jax.Array:
    """Re⟨a, b⟩ = Σ_leaves Re(Σ conj(a) b): all leaves flattened and concatenated."""
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(f"pytrees differ: {jax.tree.structure(a)} vs {jax.tree.structure(b)}")
    if not jax.tree.leaves(a):
        raise ValueError("pytrees have no leaves")
    parts = [
        jnp.real(jnp.vdot(x, y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(parts[1:], parts[0])


def tree_norm(tree) -> jax.Array:
    """‖g‖ = sqrt(Re⟨g, g⟩) over all leaves flattened and concatenated; unbatched, scalar."""
    return jnp.sqrt(_tree_inner(tree, tree))


def gradient_cosine(g, g_ref) -> jax.Array:
    """cos(g, g_ref) = ⟨g, g_ref⟩ / (‖g‖ ‖g_ref‖) over all leaves flattened and concatenated.

    Unbatched pytrees of equal structure; scalar result. No ε clamp: nan if either norm is 0.
    Complex leaves use the real inner product Re Σ conj(g) g_ref. The cosine is over exactly the
    leaves passed: leaves on which g and g_ref agree by construction (a readout every method
    computes exactly) distort it (towards 1 when ‖g‖ ≈ ‖g_ref‖), so pass only the leaves the
    methods differ on.
    """
    return _tree_inner(g, g_ref) / (tree_norm(g) * tree_norm(g_ref))


def magnitude_ratio(g, g_ref) -> jax.Array:
    """‖g‖ / ‖g_ref‖ over all leaves flattened and concatenated; unbatched pytrees, scalar."""
    return tree_norm(g) / tree_norm(g_ref)


def jacobian_spectrum(M, variance: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Effective rank and condition number of a sensitivity tensor M = ∂h/∂θ.

    M [n, ...] (neurons on axis 0) is reshaped to [n, P], with singular values
    σ_0 ≥ ... ≥ σ_{n−1} (σ_i = 0 for i ≥ P when P < n).
    effective_rank = min { r : Σ_{i<r} σ_i² ≥ variance · Σ_i σ_i² } (int32; 0 for M = 0)
    condition_number = σ_0 / σ_{n−1} (inf if σ_{n−1} = 0).
    Unbatched; callers vmap.
    """
    M = jnp.asarray(M)
    n = M.shape[0]
    A = M.reshape(n, -1)
    if A.shape[1] > n:
        # Same singular values from the n × n triangular factor of Aᵀ = Q R: the SVD of the wide
        # [n, P] matrix itself allocates P × P workspace on CPU (17 GB at n = 256), and the Gram
        # matrix A Aᵀ would square the condition number in float32.
        A = jnp.linalg.qr(A.T, mode="r")
    sigma = jnp.linalg.svd(A, compute_uv=False)
    energy = jnp.cumsum(sigma**2)
    total = energy[-1]
    rank = jnp.argmax(energy >= variance * total).astype(jnp.int32) + 1
    rank = jnp.where(total > 0, rank, 0)
    sigma_min = sigma[-1] if sigma.shape[0] == n else jnp.zeros_like(sigma[0])
    condition = jnp.where(sigma_min > 0, sigma[0] / sigma_min, jnp.inf)
    return rank, condition


def spectral_radius(J, squarings: int = 12) -> jax.Array:
    """ρ(J) = max |λ_i(J)| of a square J [n, n] by Gelfand's formula, ρ = lim ‖J^k‖^{1/k}, with
    k = 2^squarings and the running product rescaled to unit Frobenius norm after each squaring
    (log ‖J^k‖ accumulated, so nothing overflows). Matrix products only, so it runs on every
    backend (jnp.linalg.eigvals is CPU-only). ‖J^k‖_F^{1/k} ≥ ρ and overestimates it by at most
    (n^{1/2} · κ)^{1/k} for a diagonalisable J with eigenvector condition κ: 0.1% at n = 256
    and k = 4096 unless κ is huge."""
    A = jnp.asarray(J)
    log_norm = jnp.zeros((), A.dtype)  # J^{2^i} = e^{log_norm} A with ‖A‖ = 1 (or A = 0)
    for i in range(squarings + 1):
        if i:
            A, log_norm = A @ A, 2.0 * log_norm
        norm = jnp.linalg.norm(A)
        A = A / jnp.where(norm > 0, norm, 1.0)
        log_norm = log_norm + jnp.log(norm)  # −inf once a power vanishes (nilpotent J): ρ = 0
    return jnp.exp(log_norm / 2.0**squarings)


def row_normalised_condition(M) -> jax.Array:
    """Condition number of M [n, ...] reshaped to [n, P] after scaling each row (neuron) to unit
    norm: how far the rows are from an orthogonal set, with their lengths taken out. This is the
    closest reading of the paper's "near-isotropic" Jacobian that a condition number can give
    (1 = orthogonal rows of any lengths); `jacobian_spectrum`'s condition number mixes in the rows'
    magnitudes. A zero row gives inf."""
    M = jnp.asarray(M)
    A = M.reshape(M.shape[0], -1)
    norms = jnp.linalg.norm(A, axis=1, keepdims=True)
    A = jnp.where(norms > 0, A / jnp.where(norms > 0, norms, 1), 0)
    return jacobian_spectrum(A)[1]


def lowest_pre_shift(pre_shift) -> int:
    """Index of the setting (e.g. a learning rate) with the lowest mean finite pre-shift loss:
    pre_shift [settings, seeds]; selection never looks after the shift. A setting with no finite
    seed scores inf."""
    arr = np.asarray(pre_shift, np.float64)
    finite = np.isfinite(arr)
    scores = np.where(finite.any(axis=1), np.nanmean(np.where(finite, arr, np.nan), axis=1), np.inf)
    return int(np.argmin(scores))


def recovery(floor, post, full) -> tuple[np.ndarray, float]:
    """Gap recovery per seed and of the seeds' geometric means.

    floor, post, full: post-shift losses [seeds] of the floor method, the method and full RTRL.
    Returns (R per seed [seeds], R_gm = the same formula on the geometric means over seeds, which
    stays finite when one seed's floor and full runs nearly coincide; nan if any is non-finite).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        per_seed = np.asarray(gap_recovery(np.asarray(floor), np.asarray(post), np.asarray(full)))
        geo = [_geometric_mean(v) for v in (floor, post, full)]
        return per_seed, float(gap_recovery(*geo))


def _geometric_mean(values) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.exp(np.mean(np.log(arr)))) if np.all(np.isfinite(arr)) else float("nan")


def pre_shift_plateau(losses, shift: int, window: int = 500, tolerance: float = 0.1):
    """Whether the pre-shift loss has plateaued: the mean over the last `window` steps before the
    shift is no more than `tolerance` (10%) below the mean over the `window` steps before those.

    losses [..., T] -> bool [...]. A network still fitting the first regime (the paper's LSTM
    footnote) makes a post-shift comparison meaningless; this is the criterion we report. A first
    regime shorter than two windows is split into two halves instead.
    """
    window = min(window, shift // 2)
    last = window_mean(losses, shift - window, shift)
    previous = window_mean(losses, shift - 2 * window, shift - window)
    return last >= (1.0 - tolerance) * previous


def every_shift_post(losses, shifts, window: int = 500):
    """Post-shift loss of every regime after the first: the mean over the last `window` steps
    before the next shift (the stream's end for the last regime). [..., T] -> [..., len(shifts)]."""
    losses = jnp.asarray(losses)
    ends = list(shifts[1:]) + [losses.shape[-1]]
    return jnp.stack([window_mean(losses, end - window, end) for end in ends], axis=-1)
