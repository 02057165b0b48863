"""A hand-computed 2-step toy for every algorithm, the arithmetic in comments.

Vanilla cell, n = 2, n_in = 1, n_out = 1, T = 2, MSE, float64, parameters set by hand. The
textbook formulas are written in NumPy here (no rtrl internals) and compared with
`rtrl.sequence_grads` at 1e-12; the rounded numbers in the comments are asserted at 1e-6.

Recurrent gradients are written row-wise in Θ = [W_rec | W_in | b] (row a = [W_rec[a, 0],
W_rec[a, 1], W_in[a, 0], b[a]]), with v_t = [h_{t−1}; x_t; 1], d_t = φ'(z_t) = 1 − h_t²,
e_t = ∂L_t/∂y_t and dh_t = W_outᵀ e_t = ∂L_t/∂h_t (readout path only).
"""

import itertools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

import rtrl

W_REC = np.array([[0.5, -0.3], [0.2, 0.4]])
W_IN = np.array([[1.0], [-0.5]])
B = np.array([0.1, -0.2])
W_OUT = np.array([[0.7, -0.6]])
B_OUT = np.array([0.05])
XS = np.array([[1.0], [0.5]])  # x_1, x_2
YS = np.array([[0.3], [-0.2]])  # y*_1, y*_2
GAMMA = 0.5  # trace decay
EPS = 1e-7  # the ε of UORO and KF-RTRL (their default)
ROUNDED = 1e-6  # tolerance for the 6-decimal numbers in the comments
TOL = 1e-12  # library vs the NumPy formulas, float64


class Toy(NamedTuple):
    h: np.ndarray  # [3, 2] h_0, h_1, h_2
    v: np.ndarray  # [3, 4] v_1, v_2 at rows 1, 2 (row 0 unused)
    d: np.ndarray  # [3, 2] d_1, d_2 at rows 1, 2
    dh: np.ndarray  # [3, 2] dh_1, dh_2 at rows 1, 2
    e: np.ndarray  # [3] e_1, e_2 at 1, 2
    losses: np.ndarray  # [3] L_1, L_2 at 1, 2


def _toy() -> Toy:
    h0 = np.zeros(2)
    # z_1 = W_rec h_0 + W_in x_1 + b = [1.0·1 + 0.1, −0.5·1 − 0.2] = [1.1, −0.7]
    h1 = np.tanh(W_REC @ h0 + W_IN @ XS[0] + B)  # [tanh 1.1, tanh −0.7] = [0.800499, −0.604368]
    # W_rec h_1 = [0.5·0.800499 − 0.3·(−0.604368), 0.2·0.800499 + 0.4·(−0.604368)]
    #           = [0.581560, −0.081647]
    # z_2 = W_rec h_1 + W_in x_2 + b = [0.581560 + 0.5 + 0.1, −0.081647 − 0.25 − 0.2]
    #     = [1.181560, −0.531647]
    h2 = np.tanh(W_REC @ h1 + W_IN @ XS[1] + B)  # [0.827943, −0.486639]
    # y_1 = W_out h_1 + b_out = 0.7·0.800499 − 0.6·(−0.604368) + 0.05 = 0.972970
    # y_2 = 0.7·0.827943 − 0.6·(−0.486639) + 0.05 = 0.921544
    y1, y2 = W_OUT @ h1 + B_OUT, W_OUT @ h2 + B_OUT
    # L_t = (y_t − y*_t)² (mean over one output): L_1 = 0.672970² = 0.452889,
    # L_2 = 1.121544² = 1.257860; e_t = 2 (y_t − y*_t): e_1 = 1.345940, e_2 = 2.243087
    e1, e2 = 2 * (y1 - YS[0]), 2 * (y2 - YS[1])
    losses = np.array([0.0, ((y1 - YS[0]) ** 2)[0], ((y2 - YS[1]) ** 2)[0]])
    # dh_t = W_outᵀ e_t: dh_1 = [0.7, −0.6]·1.345940 = [0.942158, −0.807564],
    #                   dh_2 = [0.7, −0.6]·2.243087 = [1.570161, −1.345852]
    dh = np.stack([h0, W_OUT.T @ e1, W_OUT.T @ e2])
    # d_1 = 1 − h_1² = [0.359201, 0.634740], d_2 = 1 − h_2² = [0.314511, 0.763182]
    h = np.stack([h0, h1, h2])
    d = 1 - h**2
    # v_1 = [0, 0, 1, 1], v_2 = [0.800499, −0.604368, 0.5, 1]
    v = np.stack([np.zeros(4)] + [np.concatenate([h[t - 1], XS[t - 1], [1.0]]) for t in (1, 2)])
    return Toy(h, v, d, dh, np.array([0.0, e1[0], e2[0]]), losses)


TOY = _toy()


def _readout_grads(toy):
    # W_out: e_1 h_1 + e_2 h_2 = [1.077424, −0.813443] + [1.857148, −1.091574]
    #      = [2.934572, −1.905017];  b_out: e_1 + e_2 = 1.345940 + 2.243087 = 3.589027
    return {
        "W_out": (toy.e[1] * toy.h[1] + toy.e[2] * toy.h[2])[None, :],
        "b_out": np.array([toy.e[1] + toy.e[2]]),
    }


def _as_params(g_theta, toy):
    """Θ-rows [2, 4] plus the (exact) readout gradients -> the params-shaped dict."""
    return {
        "W_rec": g_theta[:, :2],
        "W_in": g_theta[:, 2:3],
        "b": g_theta[:, 3],
        **_readout_grads(toy),
    }


def _diagonal_rows(toy, m1, m2):
    """∂L/∂Θ row a = dh_1,a m_1,a + dh_2,a m_2,a when M_t[i, a] = δ_ia m_t,a (M stays diagonal)."""
    return toy.dh[1][:, None] * m1 + toy.dh[2][:, None] * m2


def exact_bptt(toy):
    # δ_2 = ∂L/∂z_2 = dh_2 ⊙ d_2 = [1.570161·0.314511, −1.345852·0.763182] = [0.493832, −1.027130]
    delta2 = toy.dh[2] * toy.d[2]
    # L_2 also reaches h_1 through W_rec: ∂L_2/∂h_1 = W_recᵀ δ_2
    #   = [0.5·0.493832 + 0.2·(−1.027130), −0.3·0.493832 + 0.4·(−1.027130)] = [0.041490, −0.559002]
    # δ_1 = (dh_1 + W_recᵀ δ_2) ⊙ d_1 = [0.983648·0.359201, −1.366566·0.634740]
    #     = [0.353328, −0.867413]
    delta1 = (toy.dh[1] + W_REC.T @ delta2) * toy.d[1]
    # row a = δ_1,a v_1 + δ_2,a v_2:
    #   W_rec = δ_2 h_1ᵀ (h_0 = 0) = [[0.395312, −0.298456], [−0.822217, 0.620765]]
    #   W_in  = δ_1 x_1 + δ_2 x_2 = [0.353328 + 0.246916, −0.867413 − 0.513565]
    #         = [0.600244, −1.380979]
    #   b     = δ_1 + δ_2 = [0.847160, −1.894544]
    return np.outer(delta1, toy.v[1]) + np.outer(delta2, toy.v[2])


def exact_rtrl(toy):
    """The same gradient forward: M_1[i, a] = δ_ia d_1,a v_1,
    M_2[i, a] = d_2,i (W_rec[i, a] d_1,a v_1 + δ_ia v_2); the off-diagonal M_2[i, a] (i ≠ a) is
    the path through h_1 that every truncation below drops."""
    eye = np.eye(2)[:, :, None]
    M1 = eye * (toy.d[1][:, None] * toy.v[1])[None]  # [i, a, :]
    M2 = toy.d[2][:, None, None] * (W_REC[:, :, None] * M1.sum(0)[None] + eye * toy.v[2])
    return np.einsum("i,iam->am", toy.dh[1], M1) + np.einsum("i,iam->am", toy.dh[2], M2)


def traces_rows(toy, gamma):
    # m_1,a = d_1,a v_1, m_2,a = γ m_1,a + d_2,a v_2. Row a:
    #   (dh_1,a d_1,a + γ dh_2,a d_1,a) v_1 + dh_2,a d_2,a v_2, with
    #   dh_1 ⊙ d_1 = [0.942158·0.359201, −0.807564·0.634740] = [0.338424, −0.512593],
    #   dh_2 ⊙ d_1 = [1.570161·0.359201, −1.345852·0.634740] = [0.564004, −0.854266],
    #   dh_2 ⊙ d_2 = δ_2 = [0.493832, −1.027130], δ_2 x_2 = [0.246916, −0.513565]
    #   v_1 coefficient: [0.338424 + 0.5·0.564004, −0.512593 + 0.5·(−0.854266)]
    #                  = [0.620426, −0.939726]
    #   W_rec = [[0.395312, −0.298456], [−0.822217, 0.620765]] (only v_2 has h_1; as exact)
    #   W_in  = [0.620426 + 0.246916, −0.939726 − 0.513565] = [0.867343, −1.453291]
    #   b     = [0.620426 + 0.493832, −0.939726 − 1.027130] = [1.114259, −1.966856]
    m1 = toy.d[1][:, None] * toy.v[1]
    m2 = gamma * m1 + toy.d[2][:, None] * toy.v[2]
    return _diagonal_rows(toy, m1, m2)


def self_path_rows(toy):
    # Sparse RTRL k = 1 with the ring mask keeps only W_rec[i, i] in the propagation term:
    # m_2,a = d_2,a (W_rec[a, a] m_1,a + v_2); M stays diagonal since M_1 is.
    # W_rec[a, a] d_1,a = [0.5·0.359201, 0.4·0.634740] = [0.179601, 0.253896]
    # v_1 coefficient dh_1,a d_1,a + δ_2,a W_rec[a, a] d_1,a
    #   = [0.338424 + 0.493832·0.179601, −0.512593 − 1.027130·0.253896] = [0.427117, −0.773377]
    #   W_rec = as exact; W_in = [0.427117 + 0.246916, −0.773377 − 0.513565]
    #         = [0.674033, −1.286942]; b = [0.427117 + 0.493832, −0.773377 − 1.027130]
    #         = [0.920949, −1.800507]
    m1 = toy.d[1][:, None] * toy.v[1]
    m2 = toy.d[2][:, None] * (np.diag(W_REC)[:, None] * m1 + toy.v[2])
    return _diagonal_rows(toy, m1, m2)


def snap1_rows(toy):
    # SnAp-1 keeps M[i, a] for rows a of neuron i (here a = i) of the full update
    #   M_2[i, a] = d_2,i (Σ_j W_rec[i, j] M_1[j, a] + δ_ia v_2)
    #             = d_2,i (W_rec[i, a] m_1,a + δ_ia v_2)
    # -> m_2,i = d_2,i (W_rec[i, i] m_1,i + v_2): for the vanilla cell the same numbers as the
    # k = 1 self path.
    m1 = toy.d[1][:, None] * toy.v[1]
    full2 = toy.d[2][:, None, None] * (
        W_REC[:, :, None] * m1[None] + np.eye(2)[:, :, None] * toy.v[2]
    )
    m2 = full2[np.arange(2), np.arange(2)]
    return _diagonal_rows(toy, m1, m2)


def immediate_rows(toy):
    # tbptt(w = 1), traces(γ = 0): row a = dh_1,a d_1,a v_1 + dh_2,a d_2,a v_2
    #   W_in = [0.338424 + 0.246916, −0.512593 − 0.513565] = [0.585341, −1.026158]
    #   b    = [0.338424 + 0.493832, −0.512593 − 1.027130] = [0.832257, −1.539723]
    return traces_rows(toy, 0.0)


HAND = {
    "exact": exact_bptt(TOY),
    "traces": traces_rows(TOY, GAMMA),
    "self_path": self_path_rows(TOY),
    "snap1": snap1_rows(TOY),
    "immediate": immediate_rows(TOY),
}
ROUNDED_ROWS = {  # the comments' numbers, row a = [W_rec[a, 0], W_rec[a, 1], W_in[a], b[a]]
    "exact": [
        [0.395312, -0.298456, 0.600244, 0.847160],
        [-0.822217, 0.620765, -1.380979, -1.894544],
    ],
    "traces": [
        [0.395312, -0.298456, 0.867343, 1.114259],
        [-0.822217, 0.620765, -1.453291, -1.966856],
    ],
    "self_path": [
        [0.395312, -0.298456, 0.674033, 0.920949],
        [-0.822217, 0.620765, -1.286942, -1.800507],
    ],
    "snap1": [
        [0.395312, -0.298456, 0.674033, 0.920949],
        [-0.822217, 0.620765, -1.286942, -1.800507],
    ],
    "immediate": [
        [0.395312, -0.298456, 0.585341, 0.832257],
        [-0.822217, 0.620765, -1.026158, -1.539723],
    ],
}
# (algorithm, options, which hand rows)
DETERMINISTIC = [
    ("rtrl", {}, "exact"),
    ("bptt", {"length": 2}, "exact"),
    ("tbptt", {"w": 2}, "exact"),
    ("traces", {"decay": GAMMA}, "traces"),
    ("sparse_rtrl", {"k": 1, "mask": "ring_self", "impl": "gather"}, "self_path"),
    ("sparse_rtrl", {"k": 1, "mask": "ring_self", "impl": "masked"}, "self_path"),
    ("snap1", {}, "snap1"),
    ("tbptt", {"w": 1}, "immediate"),
    ("traces", {"decay": 0.0}, "immediate"),
]


def _cell():
    return rtrl.cells.get("vanilla", n_in=1, n_hidden=2, n_out=1)


def _params():
    return {
        "W_rec": jnp.asarray(W_REC),
        "W_in": jnp.asarray(W_IN),
        "b": jnp.asarray(B),
        "W_out": jnp.asarray(W_OUT),
        "b_out": jnp.asarray(B_OUT),
    }


def _assert_grads(got, expected, what):
    chex.assert_trees_all_close(dict(got), expected, rtol=0, atol=TOL, custom_message=what)


def test_toy_forward_pass_and_hand_numbers():
    np.testing.assert_allclose(
        TOY.h[1:], [[0.800499, -0.604368], [0.827943, -0.486639]], atol=ROUNDED
    )
    np.testing.assert_allclose(TOY.losses[1:], [0.452889, 1.257860], atol=ROUNDED)
    np.testing.assert_allclose(TOY.e[1:], [1.345940, 2.243087], atol=ROUNDED)
    np.testing.assert_allclose(
        TOY.d[1:], [[0.359201, 0.634740], [0.314511, 0.763182]], atol=ROUNDED
    )
    readout = _readout_grads(TOY)
    np.testing.assert_allclose(readout["W_out"], [[2.934572, -1.905017]], atol=ROUNDED)
    np.testing.assert_allclose(readout["b_out"], [3.589027], atol=ROUNDED)
    for name, rows in ROUNDED_ROWS.items():
        np.testing.assert_allclose(HAND[name], rows, atol=ROUNDED, err_msg=name)
    # The hand BPTT and hand RTRL derivations agree.
    np.testing.assert_allclose(exact_rtrl(TOY), HAND["exact"], rtol=0, atol=TOL)
    # The library's cell and loss give the same forward pass.
    cell, params = _cell(), _params()
    carry = cell.initial_carry(jnp.float64)
    for t in (1, 2):
        carry, y = cell.step(params, carry, jnp.asarray(XS[t - 1]))
        np.testing.assert_allclose(carry, TOY.h[t], rtol=0, atol=TOL)
        np.testing.assert_allclose(y, [TOY.e[t] / 2 + YS[t - 1][0]], rtol=0, atol=TOL)
    total = rtrl.sequence_loss(cell, params, jnp.asarray(XS), jnp.asarray(YS))
    np.testing.assert_allclose(total, TOY.losses.sum(), rtol=0, atol=TOL)


def test_deterministic_algorithms_match_hand_gradients():
    cell, params = _cell(), _params()

    @jax.jit
    def all_grads(params, xs, ys):
        return [
            rtrl.sequence_grads(rtrl.algorithms.get(name, cell, **opts), params, xs, ys, None)
            for name, opts, _ in DETERMINISTIC
        ]

    results = all_grads(params, jnp.asarray(XS), jnp.asarray(YS))
    for (name, opts, hand), got in zip(DETERMINISTIC, results, strict=True):
        _assert_grads(got, _as_params(HAND[hand], TOY), f"{name} {opts}")


# ----------------------------------------------------------------------------------------------
# UORO and KF-RTRL: deterministic given their random signs, which are read off their state.


def uoro_hand(toy, nu1, nu2):
    """UORO over the 2 steps for signs ν_1, ν_2 ∈ {±1}²; returns (∂L/∂Θ rows, s̃_1, s̃_2,
    ρ0 J s̃_1, ρ1 of step 2).

    Step 1 (s̃_0 = 0, θ̃_0 = 0): νᵀ ∂h_1/∂Θ = (ν_1 ⊙ d_1) ⊗ v_1, of norm ‖d_1‖ ‖v_1‖ for any signs
    = 0.729328·1.414214 = 1.031433, so ρ1 = sqrt(1.031433 / √2) = 0.854007 and
    s̃_1 = ρ1 ν_1, θ̃_1 = (ν_1 ⊙ d_1) ⊗ v_1 / ρ1, estimate (dh_1·ν_1)(ν_1 ⊙ d_1) ⊗ v_1.
    Step 2: J s̃_1 = d_2 ⊙ (W_rec s̃_1), ρ0 = sqrt(‖θ̃_1‖ / ‖J s̃_1‖),
    ρ1 = sqrt(‖d_2‖ ‖v_2‖ / √2) = sqrt(0.825448·1.502018 / 1.414214) = 0.936321,
    s̃_2 = ρ0 J s̃_1 + ρ1 ν_2, θ̃_2 = θ̃_1 / ρ0 + (ν_2 ⊙ d_2) ⊗ v_2 / ρ1, estimate (dh_2·s̃_2) θ̃_2.
    Every ρ carries the implementation's ε: sqrt(a / (b + ε)) + ε.
    """

    def rho(a, b):
        return np.sqrt(a / (b + EPS)) + EPS

    norm_nu = np.sqrt(2.0)
    F1 = np.outer(nu1 * toy.d[1], toy.v[1])
    rho1 = rho(np.linalg.norm(F1), norm_nu)
    s1, th1 = rho1 * nu1, F1 / rho1  # ρ0 J s̃_0 = 0 and θ̃_0 / ρ0 = 0
    g = (toy.dh[1] @ s1) * th1
    Js = toy.d[2] * (W_REC @ s1)
    rho0 = rho(np.linalg.norm(th1), np.linalg.norm(Js))
    F2 = np.outer(nu2 * toy.d[2], toy.v[2])
    rho1 = rho(np.linalg.norm(F2), norm_nu)
    s2, th2 = rho0 * Js + rho1 * nu2, th1 / rho0 + F2 / rho1
    g = g + (toy.dh[2] @ s2) * th2
    return g, s1, s2, rho0 * Js, rho1


SIGNS = [np.array(s, float) for s in itertools.product((1.0, -1.0), repeat=2)]


def test_uoro_hand_numbers_and_expectation():
    np.testing.assert_allclose(uoro_hand(TOY, SIGNS[0], SIGNS[0])[4], 0.936321, atol=ROUNDED)
    # Averaging over all 16 sign pairs gives the exact gradient: the cross terms ν_2(…) cancel
    # and E[ν_1 ν_1ᵀ] = I.
    estimates = [uoro_hand(TOY, nu1, nu2)[0] for nu1 in SIGNS for nu2 in SIGNS]
    np.testing.assert_allclose(np.mean(estimates, axis=0), HAND["exact"], rtol=0, atol=TOL)
    assert max(np.max(np.abs(est - HAND["exact"])) for est in estimates) > 0.1  # not exact alone


def _two_steps_and_sequence(name):
    """Jitted (key -> state_1, state_2, step-1 grads, step-2 grads, sequence_grads) for one
    estimator on the toy: compiled once, called per seed."""
    cell, params = _cell(), _params()
    algo = rtrl.algorithms.get(name, cell)
    xs, ys = jnp.asarray(XS), jnp.asarray(YS)

    @jax.jit
    def run(key):
        state1, out1 = algo.step(params, algo.init(key, params), xs[0], ys[0])
        state2, out2 = algo.step(params, state1, xs[1], ys[1])
        seq = rtrl.sequence_grads(algo, params, xs, ys, key)
        return state1, state2, out1.grads, out2.grads, seq

    return run


def test_uoro_library_matches_hand_for_its_signs():
    run = _two_steps_and_sequence("uoro")
    seen = set()
    for seed in range(4):
        state1, state2, grads1, grads2, seq = run(jax.random.key(seed))
        # s̃_1 = ρ1 ν_1 with ρ1 = 0.854007 > 0: the signs are ν_1, the magnitude ρ1.
        nu1 = np.sign(np.asarray(state1.s_tilde))
        _, s1, _, rho0_Js, rho1 = uoro_hand(TOY, nu1, nu1)  # these do not depend on ν_2
        np.testing.assert_allclose(state1.s_tilde, s1, rtol=0, atol=TOL)
        np.testing.assert_allclose(np.abs(s1), 0.854007, atol=ROUNDED)
        # s̃_2 − ρ0 J s̃_1 = ρ1 ν_2.
        rest = np.asarray(state2.s_tilde) - rho0_Js
        np.testing.assert_allclose(np.abs(rest), rho1, rtol=0, atol=TOL)
        nu2 = np.sign(rest)
        g, _, s2, _, _ = uoro_hand(TOY, nu1, nu2)
        np.testing.assert_allclose(state2.s_tilde, s2, rtol=0, atol=TOL)
        total = jax.tree.map(jnp.add, grads1, grads2)
        _assert_grads(total, _as_params(g, TOY), f"uoro steps, {seed=}, {nu1=}, {nu2=}")
        _assert_grads(seq, _as_params(g, TOY), f"uoro sequence_grads, {seed=}")
        seen.add((*nu1, *nu2))
    assert len(seen) >= 2  # the seeds exercise more than one sign pattern


def kf_hand(toy, c2_1, c1_2, c2_2):
    """KF-RTRL over the 2 steps for the signs c2 (step 1) and c1, c2 (step 2); returns
    (∂L/∂Θ rows, u_1, u_2, p1 at step 2, p2 at steps 1 and 2).

    Step 1 (u_0 = 0, A_0 = 0): p1 = sqrt(ε / ε) = 1, p2 = sqrt(‖d_1‖ / ‖v_1‖)
    = sqrt(0.729328 / 1.414214) = 0.718132; u_1 = c2 p2 v_1, A_1 = c2 diag(d_1) / p2, so the
    estimate (dh_1ᵀ A_1) ⊗ u_1 = c2² (dh_1 ⊙ d_1) ⊗ v_1 is exact for either sign.
    Step 2: H_2 = diag(d_2) W_rec, p1 = sqrt(‖H_2 A_1‖ / ‖u_1‖), p2 = sqrt(‖d_2‖ / ‖v_2‖)
    = sqrt(0.825448 / 1.502018) = 0.741323; u_2 = c1 p1 u_1 + c2 p2 v_2,
    A_2 = c1 H_2 A_1 / p1 + c2 diag(d_2) / p2, estimate (dh_2ᵀ A_2) ⊗ u_2.
    Every p is sqrt((a + ε) / (b + ε)).
    """

    def p(a, b):
        return np.sqrt((a + EPS) / (b + EPS))

    p2_1 = p(np.linalg.norm(toy.d[1]), np.linalg.norm(toy.v[1]))
    u1, A1 = c2_1 * p2_1 * toy.v[1], c2_1 * np.diag(toy.d[1]) / p2_1
    g = np.outer(toy.dh[1] @ A1, u1)
    HA = np.diag(toy.d[2]) @ W_REC @ A1
    p1 = p(np.linalg.norm(HA), np.linalg.norm(u1))
    p2_2 = p(np.linalg.norm(toy.d[2]), np.linalg.norm(toy.v[2]))
    u2 = c1_2 * p1 * u1 + c2_2 * p2_2 * toy.v[2]
    A2 = c1_2 * HA / p1 + c2_2 * np.diag(toy.d[2]) / p2_2
    return g + np.outer(toy.dh[2] @ A2, u2), u1, u2, p1, (p2_1, p2_2)


def test_kf_rtrl_hand_numbers_and_expectation():
    _, _, _, _, (p2_1, p2_2) = kf_hand(TOY, 1.0, 1.0, 1.0)
    np.testing.assert_allclose([p2_1, p2_2], [0.718132, 0.741323], atol=ROUNDED)
    estimates = [kf_hand(TOY, *c)[0] for c in itertools.product((1.0, -1.0), repeat=3)]
    # The mixed terms carry c1 c2 of step 2 and cancel in the average over the 8 sign triples.
    np.testing.assert_allclose(np.mean(estimates, axis=0), HAND["exact"], rtol=0, atol=TOL)
    assert max(np.max(np.abs(est - HAND["exact"])) for est in estimates) > 0.1


def test_kf_rtrl_library_matches_hand_for_its_signs():
    run = _two_steps_and_sequence("kf_rtrl")
    step1_rows = np.outer(TOY.dh[1] * TOY.d[1], TOY.v[1])  # exact whatever the signs
    seen = set()
    for seed in range(4):
        state1, state2, grads1, grads2, seq = run(jax.random.key(seed))
        for name, value in _as_params(step1_rows, TOY).items():
            if name in ("W_rec", "W_in", "b"):
                np.testing.assert_allclose(grads1[name], value, rtol=0, atol=TOL, err_msg=name)
        # u_1 = c2 p2 v_1 and v_1[3] = 1: c2 = sign(u_1[3]).
        c2_1 = float(np.sign(state1.u[3]))
        _, u1, _, p1, (_, p2_2) = kf_hand(TOY, c2_1, 1.0, 1.0)
        np.testing.assert_allclose(state1.u, u1, rtol=0, atol=TOL)
        # u_2 = c1 p1 u_1 + c2 p2 v_2 with u_1[:2] = 0 (h_0 = 0): u_2[0] = c2 p2 h_1[0] gives
        # c2, then u_2[2] = c1 p1 u_1[2] + c2 p2 x_2 gives c1.
        u2 = np.asarray(state2.u)
        c2_2 = float(np.sign(u2[0] / TOY.h[1][0]))
        c1_2 = float(np.sign((u2[2] - c2_2 * p2_2 * XS[1][0]) / (p1 * u1[2])))
        g, _, u2_hand, _, _ = kf_hand(TOY, c2_1, c1_2, c2_2)
        np.testing.assert_allclose(u2, u2_hand, rtol=0, atol=TOL)
        signs = (c2_1, c1_2, c2_2)
        total = jax.tree.map(jnp.add, grads1, grads2)
        _assert_grads(total, _as_params(g, TOY), f"kf_rtrl steps, {seed=}, {signs=}")
        _assert_grads(seq, _as_params(g, TOY), f"kf_rtrl sequence_grads, {seed=}")
        seen.add(c2_1 * c1_2 * c2_2)  # the estimate depends on the signs through this product
    assert seen == {1.0, -1.0}  # both outcomes of the 2-step estimate occur
