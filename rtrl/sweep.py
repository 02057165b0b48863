"""One in-place pass over the sensitivity tensor for ring-sparse RTRL and eligibility traces.

For a propagation term that only reaches ring neighbours, P_t[g n + i] = Σ_s w[g n + i, s]
M_h,{t-1}[(i + o_s) mod n] (paper Eq. 8 with a ring mask; no term at all for traces), the new
neuron-i slice of M depends on old slices i + o_min … i + o_max only. So the step

    M_t[i] = core'(z_t, s_{t-1})_i · (I_t[i] + P_t[i], M_{t-1}[i])   (+ γ M_h,{t-1}[i], traces)
    g      = Σ_i coef_i M_{t-1}[i]                                    (the gradient contraction)

can sweep i in blocks of B neurons, read each old block once, write its new block over it
(`dynamic_update_slice` of a loop-carried buffer, which XLA does in place), and accumulate the
contraction from the same cached block. The old rows a block still needs after they were
overwritten are kept aside: the L rows just below it (`lag`) and, for the last block, the U
rows past the end of the ring (`head`, saved before the sweep). That is one read and one write
of M per step, the M-touch floor. The obvious whole-tensor program instead reads M for the
contraction, reads it again (shifted) for the update, writes a new M and then copies it back
into the loop-carried buffer, because an update that reads shifted rows cannot be done in place
(5 passes over M instead of 2, seen in the compiled HLO).

Shapes: M leaves [n, R, m] (R = G n rows, G gates per neuron), z [R], carry leaves [n],
v [m], coef leaves [n], w [R, k]. Offsets are signed Python ints (ring: 0, +1, −1, +2, …).
"""

import jax
import jax.numpy as jnp

# Blocks of about this many bytes per M leaf: big enough to amortise the per-iteration cost of
# the loop, small enough that a block and its neighbours stay in cache between the passes.
BLOCK_BYTES = 2 << 20


def block_rows(n: int, row_bytes: int, reach: int) -> int | None:
    """Neurons per block: the largest divisor of n below n that is at least `reach` and keeps a
    block within BLOCK_BYTES; None (no sweep) when all of M fits in one block, where the plain
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
    # The hidden-state leaf (first in both cells: h, or (h, c)) is read at neighbouring rows:
    # the old rows just below a block were overwritten by the previous block, so they are
    # carried (`lag`), and rows 0 .. U-1, read by the last block, are saved first (`head`).
    head = leaves[0][:U]
    lag0 = leaves[0][n - L :]
    carry_leaves = jax.tree.leaves(carry)
    coef_leaves = jax.tree.leaves(coef)
    wg = w.reshape(G, n, len(offsets)) if offsets else None
    zg = z.reshape(G, n)
    diag = jnp.arange(G)[:, None, None] * n + jnp.arange(B)[None, :, None]  # [G, B, 1] row g n + r
    last_rows = (jnp.arange(B)[None, :] == jnp.arange(B - L, B)[:, None]).astype(v.dtype)  # [L, B]

    def body(b, state):
        leaves, lag, acc = state
        start = b * B
        rows = [jax.lax.dynamic_slice_in_dim(leaf, start, B) for leaf in leaves]  # old blocks
        old_h = rows[0]
        dz = (
            jnp.where(jnp.arange(R)[None, None, :] == diag + start, 1.0, 0.0).astype(v.dtype)[
                ..., None
            ]
            * v
        )  # I_t rows g n + i, i in the block: [G, B, R, m]
        if offsets:
            ahead = jax.lax.dynamic_slice_in_dim(leaves[0], jnp.minimum(start + B, n - U), U)
            ahead = jnp.where(b == nb - 1, head, ahead)
            window = jnp.concatenate([lag, old_h, ahead])  # old rows start-L .. start+B+U-1
            wb = jax.lax.dynamic_slice_in_dim(wg, start, B, axis=1)  # [G, B, k]
            for s, o in enumerate(offsets):
                dz = dz + wb[:, :, s, None, None] * window[L + o : L + o + B][None]
        z_b = jax.lax.dynamic_slice_in_dim(zg, start, B, axis=1).reshape(G * B)
        carry_b = jax.tree.unflatten(
            treedef, [jax.lax.dynamic_slice_in_dim(c, start, B) for c in carry_leaves]
        )
        old_b = jax.tree.unflatten(treedef, rows)
        new_b = jax.tree.leaves(_jvp_block(cell, z_b, carry_b, dz.reshape(G * B, R, m), old_b))
        if decay:
            new_b[0] = new_b[0] + decay * old_h
        for c, old in zip(coef_leaves, rows, strict=True):
            acc = acc + jnp.einsum("i,iam->am", jax.lax.dynamic_slice_in_dim(c, start, B), old)
        # XLA:CPU writes a loop-carried block in place only if every other read of the buffer is
        # ordered before the write, it orders by data dependence alone (optimisation barriers
        # are dropped), and it re-reads M for any cheap consumer. So the other reads (the
        # contraction and the rows kept for the next block) are matrix products, which it does
        # not duplicate, and the written values depend on both through a term that is zero
        # whenever they are finite. Without this XLA copies all of M twice per block.
        after = 0.0 * acc[0, 0]
        if L:
            lag = jnp.einsum("lb,bam->lam", last_rows, old_h)  # old_h[B-L:] as a product
            after = after + 0.0 * lag[0, 0, 0]
        leaves = [
            jax.lax.dynamic_update_slice_in_dim(leaf, new + after, start, axis=0)
            for leaf, new in zip(leaves, new_b, strict=True)
        ]
        return leaves, lag, acc

    acc0 = jnp.zeros((R, m), v.dtype)
    leaves, _, acc = jax.lax.fori_loop(0, nb, body, (leaves, lag0, acc0))
    return jax.tree.unflatten(treedef, leaves), acc


def _jvp_block(cell, z, carry, dz, dM):
    """Tangent of core(z, s) for a block of B neurons (z [G B], carry leaves [B]) along the
    R·m tangent columns of dz [G B, R, m] and dM leaves [B, R, m]; the core is elementwise per
    neuron, so it runs on the block as on a B-neuron cell."""

    def one(dz_col, dcarry_col):
        return jax.jvp(cell.core, (z, carry), (dz_col, dcarry_col))[1]

    return jax.vmap(jax.vmap(one, in_axes=1, out_axes=1), in_axes=2, out_axes=2)(dz, dM)
