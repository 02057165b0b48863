"""One in-place pass over the sensitivity tensor for ring-sparse RTRL (traces: see forward).

For a propagation term that only reaches ring neighbours, P_t[g n + i] = Σ_s w[g n + i, s]
M_h,{t-1}[(i + o_s) mod n] (paper Eq. 8 with a ring mask; no term at all for traces), the new
neuron-i slice of M depends on old slices i + o_min … i + o_max only. So the step

    M_t[i] = core'(z_t, s_{t-1})_i · (I_t[i] + P_t[i], M_{t-1}[i])   (+ γ M_h,{t-1}[i], traces)
    g      = Σ_i coef_i M_{t-1}[i]                                    (the gradient contraction)

can pass i in blocks of B neurons, read each old block once, write its new block over it
(`dynamic_update_slice` of a loop-carried buffer, which XLA does in place), and accumulate the
contraction from the same cached block. The old rows a block needs travel in the loop state as a
small window (rows start−L … start+B+U−1 of the hidden leaf, L and U the reach of the offsets
below and above); the next window is sliced from M after the current block was written (its new
rows lie above the written ones, so they are still old; the U rows past the ring's end are
saved before the pass). That is one read and one write of M per step, the M-touch floor.

The obvious whole-tensor program reads M for the contraction, reads it again (shifted) for the
update, writes a new M and then copies it back into the loop-carried buffer, because an update
that reads shifted rows cannot be done in place: 5 passes over M instead of 2 (seen in the
compiled HLO). Two XLA:CPU behaviours shape this code: it orders reads before an in-place write
only by data dependence (optimisation barriers are dropped before fusion), hence the windows
read after the write; and it evaluates a concatenation inside a fused loop element by element
with branches, hence the static slices of a carried window instead of rolls of M.

Shapes: M leaves [n, R, m] (R = G n rows, G gates per neuron), z [R], carry leaves [n],
v [m], coef leaves [n], w [R, k]. Offsets are signed Python ints (ring: 0, +1, −1, +2, …).
"""

import jax
import jax.numpy as jnp

from rtrl import cells

# Blocks of about this many bytes per M leaf: big enough to amortise the per-iteration cost of
# the loop, small enough that a block and its neighbours stay in cache between the passes.
# Vanilla n=256, k=4, idle: blocks of 1, 2, 4, 8, 16 MiB took 18, 14, 11, 11, 15 ms per step.
BLOCK_BYTES = 4 << 20


def block_rows(n: int, row_bytes: int, reach: int) -> int | None:
    """Neurons per block: the largest divisor of n below n that is at least `reach` and keeps a
    block within BLOCK_BYTES; None (no pass) when all of M fits in one block, where the plain
    program is already one pass over cached data, or when no divisor qualifies."""
    if n * row_bytes <= BLOCK_BYTES:
        return None
    fits = [d for d in range(max(reach, 1), n) if n % d == 0 and d * row_bytes <= BLOCK_BYTES]
    return max(fits) if fits else None


def update_and_contract(cell, z, carry, v, M, coef, w, offsets, decay, block):
    """(M_t, Σ_i coef_i M_{t-1}[i] summed over carry leaves [R, m]) in one blocked pass."""
    n, R, m = jax.tree.leaves(M)[0].shape
    G = R // n
    L = max([0] + [-o for o in offsets])  # rows needed below a block
    U = max([0] + list(offsets))  # rows needed above it
    B, nb = block, n // block
    leaves, treedef = jax.tree.flatten(M)
    # Each leaf's old rows for the current block travel in the loop state (`windows`): for the
    # hidden leaf (first in both cells: h, or (h, c)) rows start-L .. start+B+U-1, for the others
    # rows start .. start+B-1. The next block's window is sliced from M *after* this block was
    # written (its rows lie above the written ones, so they are still old), which orders every
    # read of M before the write that would clobber it: XLA then updates M in place, and the
    # compute reads static slices of a small buffer instead of a concatenation.
    reach = [(L, U)] + [(0, 0)] * (len(leaves) - 1)
    head = leaves[0][:U]  # old rows 0 .. U-1, needed by the last block after block 0 is written
    windows0 = [
        jnp.concatenate([leaf[n - lo :], leaf[: B + hi]]) if lo else leaf[: B + hi]
        for leaf, (lo, hi) in zip(leaves, reach, strict=True)
    ]
    carry_leaves = jax.tree.leaves(carry)
    coef_leaves = jax.tree.leaves(coef)
    wg = w.reshape(G, n, len(offsets)) if offsets else None
    zg = z.reshape(G, n)
    diag = jnp.arange(G)[:, None, None] * n + jnp.arange(B)[None, :, None]  # [G, B, 1] row g n + r

    def body(b, state):
        leaves, windows, acc = state
        start = b * B
        rows = [win[lo : lo + B] for win, (lo, _) in zip(windows, reach, strict=True)]
        dz = (
            jnp.where(jnp.arange(R)[None, None, :] == diag + start, 1.0, 0.0).astype(v.dtype)[
                ..., None
            ]
            * v
        )  # I_t rows g n + i, i in the block: [G, B, R, m]
        if offsets:
            wb = jax.lax.dynamic_slice_in_dim(wg, start, B, axis=1)  # [G, B, k]
            for s, o in enumerate(offsets):
                dz = dz + wb[:, :, s, None, None] * windows[0][L + o : L + o + B][None]
        z_b = jax.lax.dynamic_slice_in_dim(zg, start, B, axis=1).reshape(G * B)
        carry_b = jax.tree.unflatten(
            treedef, [jax.lax.dynamic_slice_in_dim(c, start, B) for c in carry_leaves]
        )
        old_b = jax.tree.unflatten(treedef, rows)
        # The core is elementwise per neuron, so it runs on the block as on a B-neuron cell.
        new_b = cells.core_tangent(cell, z_b, carry_b, dz.reshape(G * B, R, m), old_b)
        new_b = jax.tree.leaves(new_b)
        if decay:
            new_b[0] = new_b[0] + decay * rows[0]
        for c, old in zip(coef_leaves, rows, strict=True):
            acc = acc + jnp.einsum("i,iam->am", jax.lax.dynamic_slice_in_dim(c, start, B), old)
        leaves = [
            jax.lax.dynamic_update_slice_in_dim(leaf, new, start, axis=0)
            for leaf, new in zip(leaves, new_b, strict=True)
        ]
        windows = [
            _next_window(leaf, win, lo, hi, B, b, nb, head if lo or hi else None)
            for leaf, win, (lo, hi) in zip(leaves, windows, reach, strict=True)
        ]
        return leaves, windows, acc

    acc0 = jnp.zeros((R, m), v.dtype)
    leaves, _, acc = jax.lax.fori_loop(0, nb, body, (leaves, windows0, acc0))
    return jax.tree.unflatten(treedef, leaves), acc


def _next_window(leaf, win, lo, hi, B, b, nb, head):
    """Old rows (b+1) B - lo .. (b+2) B + hi - 1 of `leaf`, from the current window and the
    rows above it in the already-updated leaf (the U rows past the ring's end come from `head`).
    At b = nb - 1 there is no next block; the value is unused."""
    n = leaf.shape[0]
    start = (b + 1) * B + hi  # first row not in the current window
    fresh = jax.lax.dynamic_slice_in_dim(leaf, jnp.minimum(start, n - B), B)
    if hi:
        # b = nb - 2: rows n - B + hi .. n - 1, then ring rows 0 .. hi - 1 (saved old ones).
        wrapped = jnp.concatenate([leaf[n - B + hi :], head])
        fresh = jnp.where(b == nb - 2, wrapped, fresh)
    return jnp.concatenate([win[B:], fresh])
