"""The depth study's trainers and streaming eval, against jax.grad and each other (float64)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lru_local
from lru_local import model, rules, training
from tests.lru_local.compare import max_relative_errors


def _setup(depth, length=16, batch=3, seed=0, d_model=6, d_state=5, activation="none"):
    cfg = lru_local.Config(
        d_model=d_model, d_state=d_state, depth=depth, noise_std=0.3, activation=activation
    )
    k_params, k_tokens, k_noise = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = lru_local.init(k_params, cfg, dtype=jnp.float64)
    tokens = jax.random.randint(k_tokens, (batch, length + 1), 0, cfg.vocab, dtype=jnp.int32)
    return cfg, params, tokens, k_noise


def _adam_reference(params, grads, lr):
    opt = optax.adam(lr)
    updates, _ = opt.update(grads, opt.init(params), params)
    return optax.apply_updates(params, updates)


def _assert_trees_close(actual, expected, rtol):
    errors = max_relative_errors(actual, expected)
    assert max(errors.values()) <= rtol, errors


@pytest.mark.parametrize("depth, activation", [(1, "none"), (3, "none"), (3, "gelu")])
def test_tbptt_with_one_window_is_bptt(depth, activation):
    cfg, params, tokens, _ = _setup(depth, activation=activation)
    loss, grads = rules.tbptt_grads(params, tokens, cfg, window=16)
    ref_loss, ref_grads = lru_local.bptt_grads(params, tokens, cfg)
    chex.assert_trees_all_close(loss, ref_loss, rtol=1e-12)
    _assert_trees_close(grads, ref_grads, 1e-10)


def test_tbptt_loss_is_the_full_sequence_loss_but_its_gradient_is_cut():
    """State carried across windows: the forward value equals BPTT's; the gradient is the mean of
    per-window gradients with the incoming state held constant (checked against a loop of jax.grad
    over explicit windows), and differs from the full BPTT gradient."""
    cfg, params, tokens, _ = _setup(2, length=16)
    loss, grads = rules.tbptt_grads(params, tokens, cfg, window=4)
    full_loss, full_grads = lru_local.bptt_grads(params, tokens, cfg)
    chex.assert_trees_all_close(loss, full_loss, rtol=1e-12)

    states = [jnp.zeros((3, cfg.d_state), jnp.complex128) for _ in range(cfg.depth)]
    expected = jax.tree_util.tree_map(jnp.zeros_like, params)
    for j in range(4):
        x = tokens[:, 4 * j : 4 * j + 5]

        def window_loss(p, x=x, states=states):
            ys, _, _ = model.stack_forward(p, x[:, :-1], local=False, s_init=states)
            return jnp.mean(model.task_loss(p["decoder"], ys[-1], x[:, 1:]))

        g = jax.grad(window_loss)(params)
        expected = jax.tree_util.tree_map(lambda a, b: a + b / 4, expected, g)
        _, _, states = model.stack_forward(params, x[:, :-1], local=False, s_init=states)
    _assert_trees_close(grads, expected, 1e-10)
    errors = max_relative_errors(grads, full_grads)
    assert errors["['layers'][0]['nu_log']"] > 1e-3  # truncation changes the recurrent gradient


@pytest.mark.parametrize("name", ["bptt", "local", "tbptt"])
def test_one_trainer_step_is_adam_on_the_trainers_gradient(name):
    cfg, params, tokens, key = _setup(2)
    trainer = training.make_trainer(name, cfg, seq_len=16, window=8, chunk=5)
    state, metrics = trainer.step(trainer.init(key, params), tokens, jnp.float64(3e-3))
    if name == "bptt":
        loss, grads = lru_local.bptt_grads(params, tokens, cfg)
    elif name == "local":
        losses, grads = lru_local.local_grads(params, tokens, jax.random.fold_in(key, 0), cfg)
        loss = losses[-1]
    else:
        loss, grads = rules.tbptt_grads(params, tokens, cfg, 8)
    chex.assert_trees_all_close(metrics["loss"], loss, rtol=1e-12)
    chex.assert_trees_all_close(metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-10)
    _assert_trees_close(state.params, _adam_reference(params, grads, 3e-3), 1e-10)
    assert int(state.step) == 1
    chex.assert_trees_all_equal(state.params["embed"], params["embed"])  # E stays frozen


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_online_with_one_update_per_window_is_the_local_trainer(activation):
    cfg, params, tokens, key = _setup(3, activation=activation)
    lr = jnp.float64(1e-2)
    online = training.make_trainer("online", cfg, seq_len=16, every=16)
    local = training.make_trainer("local", cfg, seq_len=16)
    s_online, s_local = online.init(key, params), local.init(key, params)
    for _ in range(2):
        s_online, m_online = online.step(s_online, tokens, lr)
        s_local, m_local = local.step(s_local, tokens, lr)
        chex.assert_trees_all_close(m_online["loss"], m_local["loss"], rtol=1e-12)
    _assert_trees_close(s_online.params, s_local.params, 1e-10)


def test_online_updates_every_k_tokens_with_states_carried():
    """online(k=4) on T=8: update after 4 tokens, then 4 more steps whose traces continue from the
    first half (recomputed by hand from chunk_step) under the updated parameters."""
    cfg, params, tokens, key = _setup(2, length=8)
    lr = 1e-2
    trainer = training.make_trainer("online", cfg, seq_len=8, every=4)
    state, metrics = trainer.step(trainer.init(key, params), tokens, jnp.float64(lr))

    from lru_local import eligibility

    opt = optax.adam(lr)
    opt_state = opt.init(params)
    layer_states = [eligibility.TRACE_ENGINE.init(3, cfg, jnp.float64) for _ in range(cfg.depth)]
    p, losses = params, []
    for j in range(2):
        t = 4 * j + jnp.arange(4)
        noise = eligibility.denoise_noise_at(jax.random.fold_in(key, 0), t, 3, cfg, jnp.float64)
        layer_states, loss, grads = eligibility.chunk_step(
            p, layer_states, tokens[:, t].T, tokens[:, t + 1].T, noise, jnp.full((4,), 0.25)
        )
        updates, opt_state = opt.update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
        losses.append(loss[-1])
    _assert_trees_close(state.params, p, 1e-10)
    chex.assert_trees_all_close(metrics["loss"], np.mean(losses), rtol=1e-12)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_depth_one_trainers_agree_over_many_steps(activation):
    """At depth 1 the local objective is the task objective: BPTT and local stay together."""
    cfg, params, tokens, key = _setup(1, activation=activation)
    lr = jnp.float64(1e-2)
    states = {}
    for name in ("bptt", "local"):
        trainer = training.make_trainer(name, cfg, seq_len=16)
        state = trainer.init(key, params)
        for step in range(5):
            batch = jnp.roll(tokens, step, axis=1)
            state, _ = trainer.step(state, batch, lr)
        states[name] = state.params
    _assert_trees_close(states["local"], states["bptt"], 1e-8)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_stream_eval_carries_state_exactly(activation):
    """Reading rows in windows with carried state scores each byte as one long sequence does."""
    cfg, params, _, _ = _setup(3, d_model=4, d_state=3, activation=activation)
    streams = jax.random.randint(jax.random.PRNGKey(7), (2, 25), 0, 256, dtype=jnp.int32)
    sums = training.stream_eval(params, streams, window=8, activation=activation)
    assert sums.shape == (3,)
    logits = model.logits(params, streams, activation)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), streams[:, 1:, None], axis=-1)[..., 0]
    expected = ce.reshape(2, 3, 8).sum(axis=(0, 2))
    chex.assert_trees_all_close(sums, expected, rtol=1e-12)
    # Without carrying the state the windows' scores change: the carry is doing something.
    fresh = [
        training.stream_eval(params, streams[:, 8 * j : 8 * j + 9], 8, activation)[0]
        for j in range(3)
    ]
    assert abs(float(fresh[1] - sums[1])) > 1e-6


def test_vmapped_lanes_match_single_runs():
    cfg, params, tokens, key = _setup(2)
    trainer = training.make_trainer("local", cfg, seq_len=16)
    keys = jax.random.split(key, 3)
    lrs = jnp.asarray([1e-3, 3e-3, 1e-2])
    states = jax.vmap(lambda k: trainer.init(k, params))(keys)
    batched, _ = jax.vmap(trainer.step, in_axes=(0, None, 0))(states, tokens, lrs)
    for lane in range(3):
        single, _ = trainer.step(trainer.init(keys[lane], params), tokens, lrs[lane])
        lane_params = jax.tree_util.tree_map(lambda x, lane=lane: x[lane], batched.params)
        _assert_trees_close(lane_params, single.params, 1e-12)


def test_bad_trainer_arguments_name_the_fix():
    cfg = lru_local.Config(d_model=4, d_state=4, depth=2)
    with pytest.raises(ValueError, match="unknown trainer 'sgd'"):
        training.make_trainer("sgd", cfg, seq_len=16)
    with pytest.raises(ValueError, match="tbptt window=5 must be a positive int dividing"):
        training.make_trainer("tbptt", cfg, seq_len=16, window=5)
    with pytest.raises(ValueError, match="online update interval=None"):
        training.make_trainer("online", cfg, seq_len=16)
