"""Forward-mode sensitivity algorithms: full RTRL, sparse RTRL, eligibility traces, SnAp-1.

The sensitivity tensor M_t = ∂s_t/∂Θ has one leaf per carry leaf, shape [n, R, m]:
M[i, a, :] = ∂s_{t,i}/∂Θ[a, :]. With v_t = [h_{t-1}; x_t; 1] and z_t = Θ v_t,

    ∂z_t/∂Θ   = P_t + I_t,    I_t[r, a, :] = δ_ra v_t            (immediate term)
    P_t       = W_rec M_h,{t-1}                                   (Jacobian propagation term)
    M_t       = core'(z_t, s_{t-1}) · (∂z_t/∂Θ, M_{t-1})          (jvp of the elementwise core)
    ∂L_t/∂Θ   = Σ_i (∂L_t/∂h_{t,i}) M_h,t[i]                      (paper Eq. 4)

For the vanilla RNN the last line of the update is M_t = φ'(z_t) ⊙ (W_rec M_{t-1} + I_t), paper
Eq. 3. The algorithms differ only in P_t, and in how much of M they store:

- rtrl: P_t = W_rec M_h (one [R, n] × [n, R·m] matmul, O(n²·P)); M stored whole, [n, R, m].
- sparse_rtrl, k >= 1: P_t[r] = Σ_{j ∈ idx[r]} W_rec[r, j] M_h[j] (paper Eq. 8), k gathered
  rows of M per row, O(k·n·P). For large k (k > n / 4) the same sum is one matmul with the
  unselected entries of W_rec zeroed, which is faster there and identical in value. M whole.
- traces: P_t = 0, then M_h ← M_h + γ M_h,{t-1} (paper Eq. 6: M ← γ M + M_imm for the vanilla
  RNN; γ = 0 is the immediate derivative). The LSTM keeps its exact diagonal cell-state path.
  With no propagation term, sensitivity never moves between neurons: from M_0 = 0 on, M[i, a] = 0
  for every row a of Θ that is not one of neuron i's own G rows g n + i. So only the diagonal
  blocks D[i, g, :] = M[i, g n + i, :] are stored ([n, G, m] per carry leaf, G = R / n gates,
  n·G·m values instead of n·R·m) and updated in O(n·G·m) per step (`_diagonal_traces`); the
  values are those of the full-M recursion, whose other entries stay exactly zero.
- sparse_rtrl, k = 0: no path kept, P_t = 0: the same algorithm as traces with γ = 0.
- snap1: SnAp-1 (Menick et al. 2021): M restricted to the entries that are non-zero after one
  step, the same diagonal blocks [n, G, m]; propagation keeps only the self-connections
  W_rec[g n + i, i].
"""

from typing import NamedTuple

import jax
import jax.flatten_util
import jax.numpy as jnp

from rtrl import cells as cells_lib
from rtrl import inplace, losses, masks, native
from rtrl.interface import Algorithm, StepOutput, assemble, check_step_shapes, readout_step


class SensitivityState(NamedTuple):
    """State of rtrl and sparse_rtrl with k >= 1."""

    carry: object  # s_{t-1}: [n] or ([n], [n])
    M: object  # like carry, each leaf [n, R, m]
    idx: jax.Array  # [R, k] int32 selected paths (sparse_rtrl; [R, 0] otherwise)
    t: jax.Array  # [] int32 steps taken
    score: jax.Array  # [n] per-neuron empirical Fisher of the dense phase ([0] without one)


class DiagonalState(NamedTuple):
    """State of traces and sparse_rtrl with k = 0: M's diagonal blocks only (`_diagonal_traces`)."""

    carry: object  # s_{t-1}: [n] or ([n], [n])
    M: object  # like carry, each leaf [n, G, m]: M[i, g, :] = ∂s_{t-1,i}/∂Θ[g n + i, :]


def sensitivity_algorithm(
    cell,
    loss,
    name,
    propagate,
    adjoint,
    select=None,
    k=0,
    mask="ring",
    ring=None,
    native_kernel=None,
    dense_until=0,
):
    """The shared forward-mode step of rtrl and sparse_rtrl (k >= 1), on the whole M.

    `propagate(W_rec, M_h [n, R·m], idx) -> P [R, R·m]` is the Jacobian propagation term and
    `adjoint(W_rec, c [R], idx) -> u [n]` its transpose applied to a vector (u = Pᵀ-weights c).

    The gradient is taken from M_{t-1}, not M_t: with c_z = ∂(e_hᵀ h_t)/∂z_t and
    c_s = ∂(e_hᵀ h_t)/∂s_{t-1} (one vjp of the elementwise core, e_h = ∂L_t/∂h_t),

        ∂L_t/∂Θ = e_hᵀ M_h,t = Σ_j u_j M_h,{t-1}[j] + Σ_i c_s,i M_{t-1}[i] + c_z ⊗ v_t,
                  u = adjoint(c_z),

    which is the same number (linearity), but leaves M_t with a single consumer (the next step),
    so XLA neither recomputes nor re-lays out the update to feed the contraction.

    `ring` (signed offsets, non-empty) says that P_t only reaches ring neighbours; then the
    update and the contraction run as one in-place pass over M, same values, one read and one
    write of M per step: where the default backend is a CPU the `rtrl.native` kernel if it
    supports the cell, otherwise (other backends, no C++ compiler), when M is large enough to be
    split in blocks, the XLA program of `rtrl.inplace`. `native_kernel`: None uses the kernel where
    it applies and is available (decided when the step is traced, so nothing is built on other
    backends), False never, True insists (an error if it cannot be used or does not apply).
    Differentiating through the step (jax.grad of a function of `step`) differentiates the XLA
    program while the primal stays on the kernel (`_kernel_pass`).

    `dense_until` = T₀ > 0 (a selection experiment, `sparse_rtrl(..., dense_until=T₀)`): steps
    t < T₀ propagate every path (full RTRL, exact gradient) and accumulate each neuron's
    empirical Fisher F_j = Σ_{t<T₀} Σ_g ‖∂L_t/∂Θ[g n + j, :]‖² (its G rows of Θ); at t = T₀ a
    scored mask (`masks.Mask.scored`) selects from F, and from then on `propagate` keeps k paths.
    Both propagation terms are evaluated every step (a `jnp.where` on t, which `vmap` over seeds
    would make of a `lax.cond` too), so the dense cost is paid throughout: meant for small n.
    """
    cells_lib.require(cell, cells_lib.FACTORISED, name)
    loss_fn = losses.get(loss)
    n, R = cell.n_hidden, cell.n_rows
    m = n + cell.n_in + 1
    row_bytes = R * m * 4  # one neuron's slice of M in float32 (the block heuristic only)
    block = None
    if ring:
        block = inplace.block_rows(n, row_bytes, max(abs(o) for o in ring))
    if dense_until and ring:
        raise ValueError("dense_until switches between propagation terms; it needs ring=None")
    scored = masks.MASKS[mask].scored if select else None
    applies = bool(ring) and native.supports(cell, _with_self(ring))
    if native_kernel and not (applies and native.available()):
        raise ValueError(_NEEDS_KERNEL)
    may_use_native = applies and native_kernel is not False

    def init(key, params):
        dtype = params["W_rec"].dtype
        carry = cell.initial_carry(dtype)
        M = jax.tree.map(lambda leaf: jnp.zeros((n, R, m), dtype), carry)
        idx = (
            masks.initial(mask, key, params["W_rec"], k) if select else jnp.zeros((R, 0), jnp.int32)
        )
        score = jnp.zeros((n if dense_until else 0,), dtype)
        return SensitivityState(carry, M, idx, jnp.zeros((), jnp.int32), score)

    def step(params, state, x, y):
        target = losses.as_target(y)
        check_step_shapes(cell, x, target)
        h_prev = cell.hidden(state.carry)
        v = cells_lib.inputs_vector(h_prev, x)
        z = cells_lib.theta(params) @ v
        idx = state.idx
        if select:
            gain = cell.row_gain(z)
            idx = masks.refresh(mask, idx, state.t, params["W_rec"], gain, k)
        if scored is not None:  # the selection from the dense phase's Fisher, at t = T₀
            idx = jnp.where(state.t == dense_until, scored(state.score, R, k), idx)
        dense = state.t < dense_until  # [] bool, False throughout without a dense phase
        step_propagate, step_adjoint = propagate, adjoint
        if dense_until:

            def step_propagate(W_rec, M_h, idx):
                return jnp.where(dense, _dense(W_rec, M_h, idx), propagate(W_rec, M_h, idx))

            def step_adjoint(W_rec, c, idx):
                return jnp.where(dense, _dense_adjoint(W_rec, c, idx), adjoint(W_rec, c, idx))

        carry = cell.core(z, state.carry)
        h = cell.hidden(carry)
        pred, step_loss, dh, readout_grads = readout_step(cell, loss_fn, params, h, target)
        _, core_vjp = jax.vjp(lambda zz, ss: cell.hidden(cell.core(zz, ss)), z, state.carry)
        c_z, c_s = core_vjp(dh)
        coef = cells_lib.add_to_hidden(cell, c_s, step_adjoint(params["W_rec"], c_z, idx))
        w = jnp.take_along_axis(params["W_rec"], idx, axis=1)  # [R, k]

        def xla(M_prev, w, coef, z, v, carry, W_rec, idx):
            if block is None:
                prev = SensitivityState(carry, M_prev, idx, None, None)
                M = _update(cell, {"W_rec": W_rec}, prev, z, v, idx, step_propagate)
                pairs = zip(jax.tree.leaves(coef), jax.tree.leaves(M_prev), strict=True)
                g_M = sum(jnp.einsum("i,iam->am", c, leaf) for c, leaf in pairs)
                return M, g_M
            return inplace.update_and_contract(cell, z, carry, v, M_prev, coef, w, ring, 0.0, block)

        # Every array the pass reads is an argument (none closed over), so that the kernel's
        # custom_jvp sees every tangent.
        args = (state.M, w, coef, z, v, state.carry, params["W_rec"], idx)
        if may_use_native and native.available():  # at trace time: never builds off a CPU
            M, g_M = _kernel_pass(cell, ring, xla)(*args)
        else:
            M, g_M = xla(*args)
        g_theta = jnp.outer(c_z, v) + g_M
        out = StepOutput(assemble(cell, g_theta, readout_grads), step_loss, pred)
        score = state.score
        if dense_until:  # Σ_g ‖g_Θ[g n + j]‖² per neuron j, while the gradient is exact
            fisher = jnp.sum(g_theta**2, axis=1).reshape(R // n, n).sum(axis=0)
            score = score + jnp.where(dense, fisher, 0.0).astype(score.dtype)
        return SensitivityState(carry, M, idx, state.t + 1, score), out

    return Algorithm(name, init, step)


def _with_self(ring):
    """Ring offsets with the self path 0 first: the paper's ring (±1, ±2, ...) then has the
    kernel's banded order [0, 1, -1, 2, ...] (2.7x faster than its general path at n = 256)."""
    return tuple(ring) if not ring or 0 in ring else (0, *ring)


def _kernel_pass(cell, ring, xla):
    """`xla`'s (M_t, g_M) from the `rtrl.native` kernel on a CPU (`jax.lax.platform_dependent`:
    the XLA program where the program is lowered for another platform), with the XLA program's
    derivative: the custom call has no differentiation rule, so jvp (and through it grad) of a
    step takes the tangent of the XLA program, same values, at the kernel's primal."""

    kernel_ring = _with_self(ring)

    def kernel(M_prev, w, coef, z, v, carry, W_rec, idx):
        if kernel_ring != ring:  # the self path with weight 0: the same sum, banded offsets
            w = jnp.concatenate([jnp.zeros_like(w[:, :1]), w], axis=1)
        A, B, E = native.step_coefficients(cell, z, carry, w, 0.0)
        # The dtype XLA's program would promote to (mixed inputs), so both branches agree.
        dtype = jnp.result_type(*jax.tree.leaves(M_prev), A, v)
        M_prev = jax.tree.map(lambda leaf: leaf.astype(dtype), M_prev)
        coef = jnp.stack(jax.tree.leaves(coef), axis=1)  # [n, L]
        return native.ring_pass(M_prev, A, B, E, v, coef, kernel_ring)

    @jax.custom_jvp
    def kernel_pass(*args):
        return jax.lax.platform_dependent(*args, cpu=kernel, default=xla)

    @kernel_pass.defjvp
    def _(primals, tangents):
        return kernel_pass(*primals), jax.jvp(xla, primals, tangents)[1]

    return kernel_pass


def _update(cell, params, state, z, v, idx, propagate):
    """M_t = core'(z_t) · (I_t + P_t, M_{t-1}) as whole-tensor operations."""
    n, R, m = jax.tree.leaves(state.M)[0].shape
    eye = jnp.arange(R)[:, None, None] == jnp.arange(R)[None, :, None]
    dz = jnp.where(eye, v[None, None, :], jnp.zeros((), v.dtype))  # I_t [R, R, m]
    P = propagate(params["W_rec"], cell.hidden(state.M).reshape(n, R * m), idx)
    dz = dz + P.reshape(R, R, m)
    # One shape for M end to end ([n, R, m] tangents) lets XLA fuse the update into one loop.
    return cells_lib.core_tangent(cell, z, state.carry, dz, state.M)


def _dense(W_rec, M_h, idx):
    return W_rec @ M_h


def _gathered(W_rec, M_h, idx):
    if idx.shape[1] == 0:  # no path (k = 0 after a dense phase)
        return jnp.zeros((W_rec.shape[0], M_h.shape[1]), M_h.dtype)
    w = jnp.take_along_axis(W_rec, idx, axis=1)  # [R, k]
    total = w[:, 0, None] * M_h[idx[:, 0]]
    for s in range(1, idx.shape[1]):
        total = total + w[:, s, None] * M_h[idx[:, s]]
    return total


def _ring_rolled(offsets):
    """Ring selection with static offsets: row g n + i keeps M_h[(i + o) mod n] for o in offsets,
    read as k rolled views of M_h, which XLA fuses into one pass (a gather by index array is
    materialised per term)."""

    def propagate(W_rec, M_h, idx):
        R, n = W_rec.shape
        w = jnp.take_along_axis(W_rec, idx, axis=1).reshape(R // n, n, len(offsets))
        total = 0.0
        for s, o in enumerate(offsets):
            total = total + w[:, :, s, None] * jnp.roll(M_h, -o, axis=0)[None]
        return total.reshape(R, -1)

    return propagate


def _dense_adjoint(W_rec, c, idx):
    return W_rec.T @ c


def gathered_adjoint(W_rec, c, idx):
    """u = Pᵀ c for a gathered selection: u_j = Σ_r [j ∈ idx[r]] W_rec[r, j] c_r, shape [n]."""
    w = jnp.take_along_axis(W_rec, idx, axis=1)  # [R, k]
    return jnp.zeros((W_rec.shape[1],), c.dtype).at[idx].add(w * c[:, None])


def _masked_dense(W_rec, M_h, idx):
    rows = jnp.arange(W_rec.shape[0])[:, None]
    keep = jnp.zeros(W_rec.shape, W_rec.dtype).at[rows, idx].set(1.0)
    return (W_rec * keep) @ M_h


GATHER_MAX_FRACTION = 4  # gather for k <= n / 4, masked matmul above
_NEEDS_KERNEL = (
    "native_kernel=True needs ring-sparse RTRL (k >= 1) with the gather impl (k <= n / 4 by"
    " default), a cell the kernel supports (rtrl.native.supports: vanilla, or LSTM with k <= 8"
    " and n a multiple of 4), a CPU backend and a built kernel (set native_kernel=None to fall"
    " back to XLA)"
)


def rtrl(cell, loss="mse"):
    """Full RTRL, M ← J M + M_imm (Williams & Zipser 1989): on Θ's rows for a factorised cell,
    otherwise on every parameter of a stepwise cell (`jacobian_rtrl`)."""
    if cells_lib.FACTORISED in cell.capabilities:
        return sensitivity_algorithm(cell, loss, "rtrl", _dense, _dense_adjoint)
    return jacobian_rtrl(cell, loss)


class JacobianState(NamedTuple):
    """State of jacobian_rtrl: the carry and M = ∂s_{t-1}/∂θ, flattened [S, P]."""

    carry: object
    M: jax.Array  # [S, P], S = size of the carry, P = number of parameters


def jacobian_rtrl(cell, loss="mse"):
    """Full RTRL for any stepwise cell, on the flattened carry s [S] and parameters θ [P]:

        M_t = (∂f/∂s) M_{t-1} + ∂f/∂θ,      f(θ, s) = transition(θ, s, x_t)
        ∂L_t/∂θ = ∂L_t/∂θ|_{s_t} + (∂L_t/∂s_t) M_t,      L_t = loss(output(θ, s_t, x_t), y_t)

    both Jacobians of f by reverse mode (S vector-Jacobian products, [S, S] and [S, P]). Memory
    S·P, time O(S²·P) per step: a reference for cells without the factorised form (a
    parameter that never reaches the carry, e.g. the readout, keeps a zero column of M)."""
    cells_lib.require(cell, cells_lib.STEPWISE, "rtrl")
    loss_fn = losses.get(loss)

    def init(key, params):
        dtype = cells_lib.param_dtype(params)
        carry = cell.initial_carry(dtype)
        size = sum(leaf.size for leaf in jax.tree.leaves(carry))
        n_params = sum(leaf.size for leaf in jax.tree.leaves(params))
        return JacobianState(carry, jnp.zeros((size, n_params), dtype))

    def step(params, state, x, y):
        target = losses.as_target(y)
        check_step_shapes(cell, x, target)
        theta, unravel = jax.flatten_util.ravel_pytree(params)
        s_prev, unravel_s = jax.flatten_util.ravel_pytree(state.carry)

        def f(th, s):
            return jax.flatten_util.ravel_pytree(cell.transition(unravel(th), unravel_s(s), x))[0]

        J_theta, J_s = jax.jacrev(f, argnums=(0, 1))(theta, s_prev)
        M = J_s @ state.M + J_theta
        s = f(theta, s_prev)

        def loss_of(th, s):
            pred = cell.output(unravel(th), unravel_s(s), x)
            step_loss, _ = losses.weighted(loss_fn, pred, target)
            return step_loss, pred

        (step_loss, pred), (g_direct, g_s) = jax.value_and_grad(
            loss_of, argnums=(0, 1), has_aux=True
        )(theta, s)
        grads = unravel(g_direct + g_s @ M)
        return JacobianState(unravel_s(s), M), StepOutput(grads, step_loss, pred)

    return Algorithm("rtrl", init, step)


def sparse_rtrl(cell, k, mask="ring", loss="mse", impl=None, native_kernel=None, dense_until=0):
    """Sparse RTRL: k of n propagation paths per row (paper Eq. 8), M [n, R, m] per carry leaf.

    impl: None (auto), "gather" or "masked". native_kernel (the ring mask with the gather impl):
    None uses the `rtrl.native` kernel on a CPU where it is built and supports the cell, False
    never, True insists (a ValueError where it cannot be used).

    k = 0 keeps no path: the same algorithm as traces(decay=0) (the immediate derivative), which
    stores only M's diagonal blocks, [n, G, m] per carry leaf (`DiagonalState`), and costs
    O(n·G·m) per step. It has no kernel pass: native_kernel None and False give the same program,
    True raises a ValueError.

    dense_until = T₀ > 0: full RTRL for t < T₀ (accumulating each neuron's empirical Fisher),
    then k paths per row from t = T₀ on, chosen by the mask at T₀ ("fisher" / "anti_fisher": the
    k neurons of largest / smallest Fisher for every row; any other mask its usual selection).
    M is stored whole throughout (also for k = 0) and the gather impl reads ring masks by index.
    The paper's §4.8 RNN comparison; the transformer's protocol trains task 1 densely the same way.
    """
    k = int(k)
    dense_until = int(dense_until)
    masks.check(mask, k, cell.n_hidden)
    if dense_until < 0:
        raise ValueError(f"dense_until must be >= 0 (0: no dense phase), got {dense_until}")
    if masks.MASKS[mask].scored is not None and not dense_until:
        raise ValueError(
            f"mask {mask!r} selects from the Fisher of a dense phase; pass dense_until=T0 > 0"
            " (the step at which it selects, e.g. the stream's shift)"
        )
    if mask == "dynamic" and cell.row_gain is None:
        raise ValueError(f"the dynamic mask needs the cell's row_gain; {cell.name!r} has none")
    if impl is None:
        impl = (
            "gather"
            if masks.paths(mask, k, cell.n_hidden) * GATHER_MAX_FRACTION <= cell.n_hidden
            else "masked"
        )
    if impl not in ("gather", "masked"):
        raise ValueError(f"unknown impl {impl!r}; use 'gather' or 'masked'")
    name = f"sparse_rtrl(k={k},{mask})"
    n = cell.n_hidden
    none = masks.paths(mask, k, n) == 0  # k = 0, or the paper's ring with k = 1
    if none and not dense_until:
        return _diagonal_traces(cell, loss, name, 0.0, native_kernel)
    if dense_until:
        name = f"sparse_rtrl(k={k},{mask},dense_until={dense_until})"
        if native_kernel:
            raise ValueError(_NEEDS_KERNEL)
    propagate = {"gather": _gathered, "masked": _masked_dense}[impl]
    ring = None
    offsets = masks.MASKS[mask].offsets
    if impl == "gather" and offsets is not None and not dense_until:
        propagate = _ring_rolled([int(o) % n for o in offsets(k, n)])
        ring = tuple(offsets(k, n))
    return sensitivity_algorithm(
        cell,
        loss,
        name,
        propagate,
        gathered_adjoint,
        select=not none,
        k=k,
        mask=mask,
        ring=ring,
        native_kernel=native_kernel,
        dense_until=dense_until,
    )


def traces(cell, decay=0.0, loss="mse", native_kernel=None):
    """Eligibility traces M ← γ M + M_imm (paper Eq. 6); decay γ = 0 is the immediate derivative
    (for the vanilla RNN; the LSTM keeps its exact cell-state path c_{t-1} → c_t).

    Stores only M's diagonal blocks, [n, G, m] per carry leaf (`DiagonalState`; the other
    entries of M stay zero), O(n·G·m) memory and time per step (`_diagonal_traces`).
    native_kernel: kept for the API; there is no kernel pass over a diagonal M, so None and
    False give the same program and True raises a ValueError."""
    decay = float(decay)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    return _diagonal_traces(cell, loss, f"traces(decay={decay:g})", decay, native_kernel)


def _diagonal_traces(cell, loss, name, decay, native_kernel=None, self_path=False):
    """traces and sparse_rtrl(k=0) on the diagonal blocks of M, O(n·G·m) per step.

    With P_t = 0 nothing carries sensitivity from one neuron to another, so M_t[i, a] = 0 for
    every row a of Θ that is not one of neuron i's G rows g n + i (true of M_0 = 0, and kept by
    M_t = core'(z_t, s_{t-1}) · (I_t, M_{t-1}) because I_t[g n + i, a] = 0 there too and the core
    is elementwise per neuron). Stored: D[i, g, :] = M[i, g n + i, :], [n, G, m] per carry leaf.
    Restricted to those entries, the full-M step of `_update` (with P_t = 0) reads

        D_t      = core'(z_t, s_{t-1}) · (Z_t, D_{t-1})  + γ D_h,{t-1}  (γ on the hidden leaf)
        Z_t[g' n + i, g, :] = δ_gg' v_t                    (I_t on the diagonal blocks, [R, G, m])
        ∂L_t/∂Θ[g n + i, :] = (∂L_t/∂h_{t,i}) D_h,t[i, g, :]

    the first line one jvp of the elementwise core per column (g, c) of D (`core_tangent`: column
    g moves gate g of every neuron at once, and each neuron's output is its own row's tangent),
    so the values are the full-M recursion's, in n·G·m per leaf instead of n·R·m.
    """
    if native_kernel:
        raise ValueError(
            "native_kernel=True needs an algorithm with a pass over the whole M (ring-sparse"
            f" RTRL with k >= 1); {name} stores only M's diagonal blocks [n, G, m] and updates"
            " them in O(n·G·m) with no kernel (use native_kernel=None or False, the same program)"
        )
    cells_lib.require(cell, cells_lib.FACTORISED, name)
    loss_fn = losses.get(loss)
    n, R = cell.n_hidden, cell.n_rows
    G, m = R // n, n + cell.n_in + 1

    def init(key, params):
        dtype = params["W_rec"].dtype
        carry = cell.initial_carry(dtype)
        return DiagonalState(carry, jax.tree.map(lambda _: jnp.zeros((n, G, m), dtype), carry))

    def step(params, state, x, y):
        target = losses.as_target(y)
        check_step_shapes(cell, x, target)
        v = cells_lib.inputs_vector(cell.hidden(state.carry), x)
        z = cells_lib.theta(params) @ v
        carry = cell.core(z, state.carry)
        gate = jnp.arange(R) // n
        dz = (gate[:, None] == jnp.arange(G)[None, :]).astype(v.dtype)[:, :, None] * v  # Z_t
        if self_path:  # SnAp-1: dz[r] += W_rec[r, r mod n] M_h[r mod n]
            neuron = jnp.arange(R) % n
            self_w = params["W_rec"][jnp.arange(R), neuron]
            dz = dz + self_w[:, None, None] * cell.hidden(state.M)[neuron]
        M = cells_lib.core_tangent(cell, z, state.carry, dz, state.M)
        if decay:
            M = cells_lib.add_to_hidden(cell, M, decay * cell.hidden(state.M))
        pred, step_loss, dh, readout_grads = readout_step(
            cell, loss_fn, params, cell.hidden(carry), target
        )
        g_rows = dh[:, None, None] * cell.hidden(M)  # [n, G, m] -> rows g n + i
        g_theta = jnp.transpose(g_rows, (1, 0, 2)).reshape(R, m)
        out = StepOutput(assemble(cell, g_theta, readout_grads), step_loss, pred)
        return DiagonalState(carry, M), out

    return Algorithm(name, init, step)


def snap1(cell, loss="mse"):
    """SnAp-1: keep only the one-step sparsity pattern of M (Menick et al. 2021): the diagonal
    blocks, propagated through each neuron's self weight W_rec[g n + i, i] (`DiagonalState`)."""
    return _diagonal_traces(cell, loss, "snap1", 0.0, self_path=True)
