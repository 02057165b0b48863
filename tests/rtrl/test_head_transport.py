"""Sparse gradient transport through attention heads (rtrl/head_transport.py) against independent
oracles: the detach forward is the dense forward bit for bit for every k; gradients match a naive
per-head ViT in which the non-selected heads' outputs are substituted constants (no
stop_gradient); the heads are redrawn every forward pass from the step's key; the Fisher
decomposition sums to the attention parameters' squared gradient; the replay buffer is
class-balanced; bad inputs are refused with the fix named. float64 where gradients are compared
(x64 as tests/conftest.py enables it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rtrl import head_transport as ht

MODEL = ht.ViT(image=(8, 8, 1), patch=4, embed=12, heads=6, depth=2, mlp=16, classes=4)
B = 3
RULE = ht.head_transport(MODEL)
STEP, SELECT, APPLY = jax.jit(RULE.step), jax.jit(RULE.select), jax.jit(MODEL.apply)


def _case(dtype=jnp.float64, seed=0):
    key = jax.random.key(seed)
    params = MODEL.init(jax.random.fold_in(key, 0), dtype)
    x = jax.random.normal(jax.random.fold_in(key, 1), (B, 8, 8, 1), dtype)
    y = jax.random.randint(jax.random.fold_in(key, 2), (B,), 0, MODEL.classes)
    return params, x, y


def _naive(params, x, gates=None, frozen=None):
    """A per-head loop ViT (the test's oracle). frozen[l][h]: a constant [B, T, d_h] used as head
    h's output in block l where gates[l, h] is False. Returns (logits, head outputs)."""
    m, dh = MODEL, MODEL.head_dim
    e = params["embed"]
    h = m.patches(x) @ e["W"] + e["b"] + e["P"]
    outs = []
    for l, bp in enumerate(params["blocks"]):
        u = ht.layer_norm(h, bp["ln1"]["g"], bp["ln1"]["b"])
        heads = []
        for j in range(m.heads):
            cols = slice(j * dh, (j + 1) * dh)
            q, k, v = (u @ bp[n]["W"][:, cols] + bp[n]["b"][cols] for n in ("q", "k", "v"))
            a = jax.nn.softmax(q @ jnp.swapaxes(k, 1, 2) / np.sqrt(dh), axis=-1)
            o = a @ v
            if frozen is not None:  # a substituted constant: no gradient path, no stop_gradient
                o = jnp.where(gates[l, j], o, frozen[l][j])
            heads.append(o)
        outs.append(heads)
        h = h + jnp.concatenate(heads, axis=-1) @ bp["o"]["W"] + bp["o"]["b"]
        u = ht.layer_norm(h, bp["ln2"]["g"], bp["ln2"]["b"])
        h = h + jax.nn.gelu(u @ bp["fc1"]["W"] + bp["fc1"]["b"]) @ bp["fc2"]["W"] + bp["fc2"]["b"]
    h = ht.layer_norm(h, params["ln"]["g"], params["ln"]["b"])
    return jnp.mean(h, axis=1) @ params["head"]["W"] + params["head"]["b"], outs


def _qkv_slice(grads, l, j):
    dh, g = MODEL.head_dim, grads["blocks"][l]
    cols = slice(j * dh, (j + 1) * dh)
    return [g[n]["W"][:, cols] for n in ("q", "k", "v")] + [g[n]["b"][cols] for n in "qkv"]


@pytest.mark.parametrize(
    "dtype, jit", [(jnp.float32, True), (jnp.float64, True), (jnp.float32, False)]
)
def test_detach_forward_is_dense_bit_for_bit_for_every_k(dtype, jit):
    params, x, _ = _case(dtype)
    apply = APPLY if jit else MODEL.apply
    dense = apply(params, x)
    for k in range(MODEL.heads + 1) if jit else (0, 3):
        gates = ht.sample_heads(jax.random.key(k), MODEL.depth, MODEL.heads, k)
        assert np.array_equal(apply(params, x, gates, False), dense), k


def test_gradients_match_the_hand_masked_oracle():
    params, x, y = _case(seed=1)
    rule, step = RULE, STEP
    logits, frozen = jax.jit(lambda p: _naive(p, x))(params)  # frozen: the dense head outputs
    np.testing.assert_allclose(APPLY(params, x), logits, rtol=1e-12)  # the oracle is the model

    @jax.jit
    def oracle(p, gates, frozen):
        return jax.grad(lambda p: ht.cross_entropy(_naive(p, x, gates, frozen)[0], y))(p)

    for k in (0, 2, 3, 6):
        state = rule.init(jax.random.key(k), params, ht.transport_spec(MODEL.heads, k))
        _, out = step(params, state, x, y)
        gates = np.asarray(out.gates)
        assert gates.sum(axis=1).tolist() == [k] * MODEL.depth
        expect = oracle(params, out.gates, frozen)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-14), out.grads, expect
        )
        for l in range(MODEL.depth):
            for j in range(MODEL.heads):
                if not gates[l, j]:
                    for g in _qkv_slice(out.grads, l, j):
                        assert np.all(np.asarray(g) == 0.0)
        if k == 0:  # Q, K, V and LN1 train not at all; W_O, the MLPs and the rest do
            for bp in out.grads["blocks"]:
                for n in ("q", "k", "v", "ln1"):
                    assert all(np.all(np.asarray(v) == 0.0) for v in jax.tree.leaves(bp[n]))
                assert np.abs(np.asarray(bp["o"]["W"])).max() > 0
                assert np.abs(np.asarray(bp["fc1"]["W"])).max() > 0


def test_a_selected_heads_gradient_is_the_dense_gradient_through_it():
    """Sparse in the last block only: the gradient reaching it is the dense one, so a selected
    head's Q/K/V gradient there equals the dense model's, and the others' are exactly zero."""
    params, x, y = _case(seed=3)
    gates = np.ones((MODEL.depth, MODEL.heads), bool)
    gates[-1] = np.arange(MODEL.heads) % 2 == 0

    def loss(p, g):
        return ht.cross_entropy(MODEL.apply(p, x, g), y)

    grad = jax.jit(jax.grad(loss))
    sparse = grad(params, jnp.asarray(gates))
    dense = grad(params, jnp.ones_like(jnp.asarray(gates)))  # every head: the dense model
    for j in range(MODEL.heads):
        for s, d in zip(_qkv_slice(sparse, 1, j), _qkv_slice(dense, 1, j), strict=True):
            if gates[-1, j]:
                np.testing.assert_allclose(s, d, rtol=1e-10, atol=1e-15)
            else:
                assert np.all(np.asarray(s) == 0.0)
    np.testing.assert_allclose(sparse["blocks"][1]["o"]["W"], dense["blocks"][1]["o"]["W"])


def test_zeroing_equals_removing_the_heads_from_the_output_projection():
    params, x, _ = _case(seed=4)
    gates = ht.sample_heads(jax.random.key(1), MODEL.depth, MODEL.heads, 2)
    dh = MODEL.head_dim
    cut = jax.tree.map(lambda v: v, params)
    for l, bp in enumerate(cut["blocks"]):
        rows = jnp.repeat(gates[l], dh)[:, None]
        bp["o"] = {**bp["o"], "W": jnp.where(rows, bp["o"]["W"], 0.0)}
    apply = APPLY
    zeroed = apply(params, x, gates, True)
    np.testing.assert_allclose(zeroed, apply(cut, x), rtol=1e-12)
    assert not np.allclose(zeroed, apply(params, x))


def test_heads_are_redrawn_every_forward_pass_from_the_step_key():
    params, x, y = _case(jnp.float32)
    rule, step, key = RULE, STEP, jax.random.key(11)
    state = rule.init(key, params, ht.transport_spec(MODEL.heads, 2))
    many = jax.jit(jax.vmap(lambda t: ht.sample_heads(jax.random.fold_in(key, t), 2, 6, 2)))(
        jnp.arange(3000)
    )
    drawn = []
    for t in range(12):
        again, out = step(params, state, x, y)
        _, same = step(params, state, x, y)  # the same state draws the same heads
        assert np.array_equal(out.gates, same.gates)
        assert np.array_equal(out.gates, many[t])
        drawn.append(np.asarray(out.gates))
        state = again
    drawn = np.stack(drawn)
    assert len({d.tobytes() for d in drawn}) >= 8  # redrawn (225 subsets: some repeat)
    assert np.all(drawn.sum(axis=2) == 2)
    np.testing.assert_allclose(np.mean(many, axis=0), 1 / 3, atol=0.04)  # uniform: k/H each
    _, dense = step(params, state, x, y, None, True)
    assert np.all(dense.gates)


def test_fixed_selections_take_the_top_or_bottom_scores():
    params, x, y = _case(jnp.float32)
    rule, step, select = RULE, STEP, SELECT
    scores = {
        "fisher": jnp.asarray(np.random.default_rng(0).random((MODEL.depth, MODEL.heads))),
        "peakedness": -jnp.arange(MODEL.depth * MODEL.heads, dtype=float).reshape(2, 6),
    }
    for name, selection in ht.SELECTIONS.items():
        state = rule.init(
            jax.random.key(0), params, ht.transport_spec(MODEL.heads, 3, "detach", name)
        )
        assert np.all(state.fixed)  # before selection: every head
        chosen = select(state, scores).fixed
        if selection.score is None:
            assert np.all(chosen)
            continue
        s = np.asarray(scores[selection.score])
        order = np.argsort(-s if selection.top else s, axis=1, kind="stable")[:, :3]
        expect = np.zeros_like(np.asarray(chosen))
        np.put_along_axis(expect, order, True, axis=1)
        assert np.array_equal(chosen, expect), name
        _, out = step(params, select(state, scores), x, y)
        assert np.array_equal(out.gates, chosen)


def test_fisher_decomposition_sums_to_the_attention_squared_gradient():
    params, x, y = _case()
    grads = jax.jit(jax.grad(lambda p: ht.cross_entropy(MODEL.apply(p, x), y)))(params)
    fisher = np.asarray(ht.head_fisher(MODEL, grads))
    assert fisher.shape == (MODEL.depth, MODEL.heads) and np.all(fisher > 0)
    for l, g in enumerate(grads["blocks"]):
        leaves = [g[n]["W"] for n in "qkvo"] + [g[n]["b"] for n in "qkv"]  # b_O: no head's
        total = sum(float(jnp.sum(jnp.square(v))) for v in leaves)
        np.testing.assert_allclose(fisher[l].sum(), total, rtol=1e-12)
        dh, j = MODEL.head_dim, 5
        rows = slice(j * dh, (j + 1) * dh)
        one = sum(float(jnp.sum(jnp.square(v))) for v in _qkv_slice(grads, l, j))
        one += float(jnp.sum(jnp.square(g["o"]["W"][rows])))
        np.testing.assert_allclose(fisher[l, j], one, rtol=1e-12)


def test_head_scores_average_fisher_and_entropy_over_minibatches():
    params, _, _ = _case()
    xs = jax.random.normal(jax.random.key(5), (3, B, 8, 8, 1), jnp.float64)
    ys = jax.random.randint(jax.random.key(6), (3, B), 0, MODEL.classes)
    got = jax.jit(lambda p: ht.head_scores(MODEL, p, xs, ys))(params)

    @jax.jit
    def one(p, x, y):
        g = jax.grad(lambda p: ht.cross_entropy(MODEL.apply(p, x), y))(p)
        return ht.head_fisher(MODEL, g), MODEL.apply_with_entropy(p, x)[1]

    fisher, entropy = 0.0, 0.0
    for m in range(3):
        f, e = one(params, xs[m], ys[m])
        fisher, entropy = fisher + f / 3, entropy + e / 3
    np.testing.assert_allclose(got["fisher"], fisher, rtol=1e-10)
    np.testing.assert_allclose(got["peakedness"], -entropy, rtol=1e-10)
    assert np.all(entropy > 0) and np.all(entropy <= np.log(MODEL.tokens) + 1e-12)


def test_replay_buffer_fills_first_and_replays_past_classes_balanced():
    state = ht.replay_init(4, 3, (1, 1, 1))
    x = jnp.arange(8, dtype=jnp.uint8).reshape(8, 1, 1, 1)
    y = jnp.asarray([0, 1, 0, 0, 1, 0, 2, 2])
    state = jax.jit(ht.replay_add)(state, x, y)
    assert state.filled.tolist() == [3, 2, 2, 0]  # class 0's fourth sample is dropped
    assert state.images[0, :, 0, 0, 0].tolist() == [0, 2, 3]
    assert state.images[1, :2, 0, 0, 0].tolist() == [1, 4]
    past = jnp.asarray([True, True, False, False])
    sample = jax.jit(ht.replay_sample, static_argnums=(2, 4))
    xr, yr, valid = sample(state, jax.random.key(0), 4000, past, 4)
    assert np.all(valid) and set(np.asarray(yr).tolist()) == {0, 1}
    assert abs(float(jnp.mean(yr == 0)) - 0.5) < 0.05  # class-balanced
    assert set(np.asarray(xr[yr == 0]).ravel().tolist()) == {0, 2}  # quota 4 // 2 = 2 each
    assert set(np.asarray(xr[yr == 1]).ravel().tolist()) == {1, 4}
    _, _, none = sample(state, jax.random.key(0), 4000, jnp.zeros(4, bool), 4)
    assert not np.any(none)


def test_spearman_and_top_heads_ties():
    a = jnp.asarray([0.1, 0.5, 0.3, 0.9])
    assert float(ht.spearman(a, a)) == pytest.approx(1.0)
    assert float(ht.spearman(a, -a)) == pytest.approx(-1.0)
    tied = jnp.zeros((1, 4))
    assert ht.top_heads(tied, 2).tolist() == [[True, True, False, False]]


def test_bad_inputs_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match=r"k = 13 heads must be an int in \[0, 12\]"):
        ht.transport_spec(12, 13)
    with pytest.raises(ValueError, match=r"k = -1"):
        ht.transport_spec(12, -1)
    with pytest.raises(ValueError, match="unknown selection 'oracle'; use one of"):
        ht.transport_spec(12, 6, "detach", "oracle")
    with pytest.raises(ValueError, match="unknown variant 'dropout'"):
        ht.transport_spec(12, 6, "dropout")
    with pytest.raises(ValueError, match="patch 5 does not divide"):
        ht.ViT(image=(28, 28, 1), patch=5)
    with pytest.raises(ValueError, match="heads × head_dim"):
        ht.ViT(embed=100, heads=12)
    with pytest.raises(ValueError, match="k = 20"):
        ht.sample_heads(jax.random.key(0), 2, 12, 20)
    with pytest.raises(ValueError, match="k = 7"):
        ht.top_heads(jnp.zeros((2, 6)), 7)
