"""The fair-chance block options (norm, block, head_input, embedding, gamma), float64.

Every option and combinations of them: the trace engine against jax.grad, generic forward mode
and central finite differences; online steps summed over a window; depth 1 local == BPTT with a
learned embedding; compiled temp memory flat in T; the forward pass against a naive numpy loop.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lru_local
from lru_local import bptt, config, model, reference, training
from tests.lru_local.compare import check_central_differences, max_relative_errors, online_sums

FAIR = dict(norm="layer", block="lru_glu", head_input="stream", embedding="learned")
ALL = dict(FAIR, gamma="trainable")

# (options, depth, d_model, d_state, batch, length, seed). Each option alone at depth 1 (the
# embedding's owner is then also the top layer), the stream head also on a hidden layer, and all
# options together at depth 2 (a hidden owner of E with normalised targets, a top non-owner).
CASES = [
    (dict(norm="layer"), 1, 5, 4, 2, 11, 0),
    (dict(block="lru_glu"), 1, 5, 4, 2, 11, 1),
    (dict(head_input="stream"), 2, 5, 4, 2, 11, 2),
    (dict(embedding="learned"), 1, 4, 3, 2, 11, 3),
    (dict(gamma="trainable"), 1, 5, 4, 2, 11, 4),
    (dict(embedding="learned", norm="layer"), 1, 4, 3, 3, 10, 5),
    (ALL, 2, 4, 5, 2, 9, 8),
]


def _problem(options, depth, d_model, d_state, batch, length, seed):
    cfg = lru_local.Config(
        d_model=d_model, d_state=d_state, depth=depth, noise_std=0.3, d_init_std=0.5, **options
    )
    k_params, k_tokens, k_noise = jax.random.split(jax.random.key(seed), 3)
    params = lru_local.init(k_params, cfg, dtype=jnp.float64)
    tokens = jax.random.randint(k_tokens, (batch, length), 0, cfg.vocab, dtype=jnp.int32)
    return cfg, params, tokens, k_noise


def _case_id(case):
    options, depth = case[0], case[1]
    names = "+".join(f"{k}={v}" for k, v in options.items())
    return f"{names}-L{depth}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_trace_engine_matches_autodiff_and_jvp(case):
    """Also: E's gradient is layer 1's alone (the trace engine computes no other, and matches
    jax.grad of the whole Σ_ℓ L^ℓ), and exactly zero when E is frozen."""
    cfg, params, tokens, key = _problem(*case)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg, chunk=4)
    ref_losses, ref_grads = lru_local.local_grads_autodiff(params, tokens, key, cfg)
    jvp_losses, jvp_grads = lru_local.local_grads_jvp(params, tokens, key, cfg)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-12)
    np.testing.assert_allclose(jvp_losses, ref_losses, rtol=1e-12)
    for name, err in max_relative_errors(grads, ref_grads).items():
        assert err <= 1e-9, f"trace vs autodiff {name}: {err:.2e}"
    for name, err in max_relative_errors(jvp_grads, ref_grads).items():
        assert err <= 1e-9, f"jvp vs autodiff {name}: {err:.2e}"
    # Real signal in every recurrent leaf, and E's gradient exactly where it is owned.
    recurrent = ("nu_log", "theta", "B_re", "B_im") + (
        ("gamma_log",) if cfg.gamma == "trainable" else ()
    )
    for layer in ref_grads["layers"]:
        for name in recurrent:
            assert np.max(np.abs(layer[name])) > 1e-6, name
    embed_grad = np.max(np.abs(np.asarray(grads["embed"])))
    assert (embed_grad > 1e-6) if cfg.embedding == "learned" else (embed_grad == 0.0)


def test_central_finite_differences_with_every_option():
    """(L^ℓ(θ + h e_k) − L^ℓ(θ − h e_k)) / 2h for sampled coordinates of every leaf, E included."""
    cfg, params, tokens, key = _problem(ALL, 2, 4, 3, 2, 12, 10)
    _, grads = lru_local.local_grads(params, tokens, key, cfg)
    noise = reference._all_noise(key, 2, 11, cfg, jnp.float64)
    # The targets are stop-gradded: hold them at the unperturbed E (a shifted E moves them too).
    targets = model.target_embedding(params, tokens[:, 1:], cfg) + noise

    def losses(p):
        ys, us, _ = model.stack_forward(p, tokens[:, :-1], local=True, arch=cfg)
        h = [model.head_features(u, y, cfg) for u, y in zip(us, ys, strict=True)]
        hidden = [
            jnp.mean(model.denoise_loss(head, h_, target))
            for head, h_, target in zip(p["heads"], h[:-1], targets, strict=True)
        ]
        task = jnp.mean(model.task_loss(p["decoder"], h[-1], tokens[:, 1:]))
        return jnp.stack([*hidden, task])

    per_layer = jax.jit(losses)

    def layer_of(path):  # E belongs to layer 1's loss, the decoder to the top layer's
        group = path[0].key
        if group in ("layers", "heads"):
            return path[1].idx
        return 0 if group == "embed" else cfg.depth - 1

    checked = check_central_differences(
        params, grads, per_layer, layer_of, rng=np.random.default_rng(0), samples=2, atol=1e-9
    )
    expected = {"nu_log", "theta", "B_re", "B_im", "C_re", "C_im", "D", "embed", "heads"}
    if cfg.block == "lru_glu":
        expected |= {"W1", "b1", "W2", "b2"}
    if cfg.gamma == "trainable":
        expected |= {"gamma_log"}
    assert expected <= checked


def test_online_steps_sum_to_local_grads():
    cfg, params, tokens, key = _problem(ALL, 2, 4, 3, 2, 8, 11)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg)
    loss_sum, grad_sum, carry = online_sums(params, tokens, key, cfg)
    assert carry[0].c.shape == (cfg.d_state, 2, cfg.vocab) and carry[1].c is None
    np.testing.assert_allclose(loss_sum, losses, rtol=1e-12)
    for name, err in max_relative_errors(grad_sum, grads).items():
        assert err <= 1e-12, f"{name}: {err:.2e}"


@pytest.mark.parametrize("options", [dict(embedding="learned"), ALL], ids=str)
def test_depth_one_local_equals_bptt_with_learned_embedding(options):
    cfg, params, tokens, key = _problem(options, 1, 5, 4, 3, 14, 12)
    losses, grads = lru_local.local_grads(params, tokens, key, cfg)
    loss, bptt_grads = lru_local.bptt_grads(params, tokens, cfg)
    np.testing.assert_allclose(losses[0], loss, rtol=1e-12)
    errors = max_relative_errors(grads, bptt_grads)
    assert "['embed']" in errors  # E's real gradient, not zeros
    for name, err in errors.items():
        assert err <= 1e-9, f"{name}: {err:.2e}"


def test_bptt_embedding_gradient_matches_finite_differences():
    cfg, params, tokens, _ = _problem(ALL, 2, 4, 3, 2, 10, 13)
    _, grads = lru_local.bptt_grads(params, tokens, cfg)
    g = np.asarray(grads["embed"])
    loss = jax.jit(lambda e: bptt.task_loss_bptt({**params, "embed": e}, tokens, cfg))
    h = 1e-6
    for row in np.asarray(tokens[0, :3]):
        for col in range(2):
            e = params["embed"]
            up, down = float(loss(e.at[row, col].add(h))), float(loss(e.at[row, col].add(-h)))
            fd = (up - down) / (2 * h)
            assert abs(fd - g[row, col]) <= 1e-5 * abs(g[row, col]) + 1e-10, (row, col)
    assert np.max(np.abs(g)) > 1e-6


def test_fair_block_forward_matches_naive_loop():
    """LN prenorm, γ, GELU + GLU, residual, decoder on LN(u^{L+1}), per step in numpy."""
    cfg, params, tokens, _ = _problem(ALL, 2, 4, 3, 2, 7, 14)
    logits = lru_local.apply(params, tokens, cfg)
    p = jax.tree_util.tree_map(np.asarray, params)

    def ln(x):
        c = x - x.mean()
        return c / np.sqrt((c**2).mean() + model.LN_EPS)

    def gelu(x):  # jax.nn.gelu's default tanh approximation
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    expected = np.zeros((2, 6, cfg.vocab))
    for b in range(2):
        states = [np.zeros(cfg.d_state, complex) for _ in range(cfg.depth)]
        for t in range(6):
            u = p["embed"][int(tokens[b, t])]
            for ell, layer in enumerate(p["layers"]):
                lam = np.exp(-np.exp(layer["nu_log"]) + 1j * layer["theta"])
                B = layer["B_re"] + 1j * layer["B_im"]
                C = layer["C_re"] + 1j * layer["C_im"]
                n = ln(u)
                states[ell] = lam * states[ell] + np.exp(layer["gamma_log"]) * (B @ n)
                z = gelu((C @ states[ell]).real + layer["D"] * n)
                gate = 1 / (1 + np.exp(-(z @ layer["W2"] + layer["b2"])))
                u = u + (z @ layer["W1"] + layer["b1"]) * gate
            expected[b, t] = ln(u) @ p["decoder"]["W"] + p["decoder"]["b"]
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)


def test_default_options_are_the_posts_model():
    """Defaults build the same parameters as before the options existed (no extra leaves), and
    a learned-E target is the L2-normalised stop-gradded next embedding."""
    cfg = lru_local.Config(d_model=4, d_state=3, depth=2)
    assert {f: getattr(cfg, f) for f in config.CHOICES} == {
        f: v[0] for f, v in config.CHOICES.items()
    }
    assert set(lru_local.init(jax.random.key(0), cfg)["layers"][0]) == {
        "nu_log", "theta", "B_re", "B_im", "C_re", "C_im", "D"
    }  # fmt: skip
    folded = lru_local.init(jax.random.key(0), cfg, jnp.float64)["layers"][0]
    gamma_cfg = lru_local.Config(d_model=4, d_state=3, depth=2, gamma="trainable")
    trainable = lru_local.init(jax.random.key(0), gamma_cfg, jnp.float64)["layers"][0]
    # Same γ ⊙ B at init, stored two ways.
    np.testing.assert_allclose(
        np.exp(trainable["gamma_log"])[:, None] * trainable["B_re"], folded["B_re"], rtol=1e-12
    )
    learned = lru_local.Config(d_model=4, d_state=3, depth=2, embedding="learned")
    params = lru_local.init(jax.random.key(0), learned, jnp.float64)
    target = model.target_embedding(params, jnp.array([3, 7]), learned)
    np.testing.assert_allclose(np.linalg.norm(target, axis=-1), 1.0, rtol=1e-12)


def _temp_bytes(cfg, length):
    params = lru_local.init(jax.random.key(0), cfg)
    tokens = jnp.zeros((2, length), jnp.int32)
    fn = jax.jit(lru_local.local_grads, static_argnames="cfg")
    compiled = fn.lower(params, tokens, jax.random.key(1), cfg=cfg).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_flat_in_sequence_length_with_every_option():
    cfg = lru_local.Config(d_model=8, d_state=8, depth=2, **ALL)
    sizes = {t: _temp_bytes(cfg, t) for t in (256, 8192)}
    assert min(sizes.values()) > 0
    assert sizes[8192] <= 1.05 * sizes[256], sizes


@pytest.mark.parametrize("field", sorted(config.CHOICES))
def test_bad_option_values_name_the_allowed_values(field):
    allowed = config.CHOICES[field]
    message = rf"Config.{field} must be one of \[{', '.join(repr(v) for v in allowed)}\]"
    with pytest.raises(ValueError, match=message):
        lru_local.Config(**{field: "bogus"})
    with pytest.raises(ValueError, match=message):
        lru_local.Config.from_mapping({field: "bogus"})


def test_glu_block_refuses_a_second_activation():
    with pytest.raises(ValueError, match="has its GELU built in"):
        lru_local.Config(block="lru_glu", activation="gelu")


def test_params_of_another_block_are_rejected():
    plain = lru_local.Config(d_model=4, d_state=3, depth=2)
    params = lru_local.init(jax.random.key(0), plain)
    glu = lru_local.Config(d_model=4, d_state=3, depth=2, block="lru_glu")
    with pytest.raises(ValueError, match=r"do not match cfg \(block='lru_glu'"):
        lru_local.local_grads(params, jnp.zeros((1, 4), jnp.int32), jax.random.key(0), glu)


def test_glu_params_with_the_posts_architecture_string_raise():
    """stream_eval(..., activation) with GLU params would silently drop the GLU: it raises."""
    cfg = lru_local.Config(d_model=4, d_state=3, depth=1, block="lru_glu")
    params = lru_local.init(jax.random.key(0), cfg)
    streams = jnp.zeros((1, 9), jnp.int32)
    with pytest.raises(ValueError, match="pass the model's lru_local.Config"):
        training.stream_eval(params, streams, 4, "none")
    assert training.stream_eval(params, streams, 4, cfg).shape == (2,)
