"""The trainers' update protocol: warmup + cosine schedule, global-norm clip, masked weight decay.

Checked in float64 against optax's own clip_by_global_norm + adamw driven by the same schedule,
for every trainer kind (batch rules and the online rule's several updates per batch).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lru_local
from lru_local import eligibility, training
from tests.lru_local.compare import max_relative_errors

OPTIONS = dict(embedding="learned")  # the block options do not touch the update; a learned E does
PROTOCOL = dict(
    schedule="warmup_cosine", total_steps=4, warmup_fraction=0.5, clip_norm=0.05, weight_decay=0.1
)


def _setup(depth=2, length=8, batch=2, seed=0, **options):
    cfg = lru_local.Config(d_model=4, d_state=3, depth=depth, noise_std=0.3, **options)
    k_params, k_tokens, k_noise = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = lru_local.init(k_params, cfg, dtype=jnp.float64)
    tokens = jax.random.randint(k_tokens, (batch, length + 1), 0, cfg.vocab, dtype=jnp.int32)
    return cfg, params, tokens, k_noise


def _reference_tx(lr, params, cfg, total_updates, warmup):
    def schedule(count):  # optax's count is int32; int32 / int would give float32 here
        progress = jnp.asarray(count, jnp.float64)
        return lr * training.SCHEDULES["warmup_cosine"](progress, warmup, total_updates)

    return optax.chain(
        optax.clip_by_global_norm(PROTOCOL["clip_norm"]),
        optax.adamw(
            schedule,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=PROTOCOL["weight_decay"],
            mask=training.decay_mask(params, cfg),
        ),
    )


def test_warmup_cosine_factors_by_hand():
    """U = 10 updates, warmup 0.3 -> W = 3: f = 1/3, 2/3, then 1 at u = 3 and cosine to 0."""
    f = training.SCHEDULES["warmup_cosine"]
    got = [float(f(jnp.float64(u), 0.3, 10)) for u in (0, 1, 2, 3, 6, 10)]
    expected = [1 / 3, 2 / 3, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi * 3 / 7)), 0.0]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert float(training.SCHEDULES["constant"](jnp.float64(5.0), 0.3, 10)) == 1.0


@pytest.mark.parametrize("name", ["bptt", "local"])
def test_batch_trainers_follow_the_protocol(name):
    cfg, params, tokens, key = _setup(**OPTIONS)
    lr = 3e-3
    trainer = training.make_trainer(name, cfg, seq_len=8, window=4, **PROTOCOL)
    tx = _reference_tx(lr, params, cfg, total_updates=4, warmup=0.5)
    state, p = trainer.init(key, params), params
    opt_state, tx_update = tx.init(params), jax.jit(tx.update)
    for step in range(3):
        batch = jnp.roll(tokens, step, axis=1)
        state, metrics = trainer.step(state, batch, jnp.float64(lr))
        if name == "bptt":
            _, grads = lru_local.bptt_grads(p, batch, cfg)
        else:
            _, grads = lru_local.local_grads(p, batch, jax.random.fold_in(key, step), cfg)
        assert float(metrics["grad_norm"]) > PROTOCOL["clip_norm"]  # the clip is active
        updates, opt_state = tx_update(grads, opt_state, p)
        p = optax.apply_updates(p, updates)
    errors = max_relative_errors(state.params, p)
    assert max(errors.values()) <= 1e-10, errors
    assert not np.allclose(state.params["embed"], params["embed"])  # learned E moves


def test_online_updates_count_through_the_schedule():
    """online(k=4) on T=8: two updates per batch, update u = 2·batch + j, over two batches."""
    cfg, params, tokens, key = _setup(**OPTIONS)
    lr = 1e-2
    trainer = training.make_trainer("online", cfg, seq_len=8, every=4, **PROTOCOL)
    tx = _reference_tx(lr, params, cfg, total_updates=8, warmup=0.5)
    state = trainer.init(key, params)
    p, opt_state = params, tx.init(params)
    tx_update = jax.jit(tx.update)
    chunk_step = jax.jit(eligibility.chunk_step, static_argnames="arch")
    for step in range(2):
        batch = jnp.roll(tokens, step, axis=1)
        state, _ = trainer.step(state, batch, jnp.float64(lr))
        layer_states = eligibility.init_layer_states(2, cfg, jnp.float64)
        for j in range(2):
            t = 4 * j + jnp.arange(4)
            noise = eligibility.denoise_noise_at(
                jax.random.fold_in(key, step), t, 2, cfg, jnp.float64
            )
            layer_states, _, grads = chunk_step(
                p, layer_states, batch[:, t].T, batch[:, t + 1].T, noise, jnp.full((4,), 0.25),
                arch=cfg,
            )  # fmt: skip
            updates, opt_state = tx_update(grads, opt_state, p)
            p = optax.apply_updates(p, updates)
    errors = max_relative_errors(state.params, p)
    assert max(errors.values()) <= 1e-10, errors


def test_weight_decay_mask():
    for embedding, decays_embed in (("frozen", False), ("learned", True)):
        cfg, params, _, _ = _setup(gamma="trainable", embedding=embedding)
        mask = training.decay_mask(params, cfg)
        assert mask["embed"] is decays_embed
        layer = mask["layers"][0]
        assert not (layer["nu_log"] or layer["theta"] or layer["gamma_log"])
        assert layer["B_re"] and layer["C_im"] and layer["D"] and mask["decoder"]["W"]


def test_frozen_embedding_stays_frozen_under_the_protocol():
    cfg, params, tokens, key = _setup()
    trainer = training.make_trainer("bptt", cfg, seq_len=8, **PROTOCOL)
    state, _ = trainer.step(trainer.init(key, params), tokens, jnp.float64(1e-2))
    np.testing.assert_array_equal(state.params["embed"], params["embed"])
    assert not np.allclose(state.params["layers"][0]["B_re"], params["layers"][0]["B_re"])


def test_bad_protocol_values_name_the_fix():
    cfg = lru_local.Config(d_model=4, d_state=4, depth=2)
    allowed = r"schedule must be one of \['constant', 'warmup_cosine'\]"
    with pytest.raises(ValueError, match=allowed):
        training.make_trainer("bptt", cfg, seq_len=8, schedule="linear")
    with pytest.raises(ValueError, match="needs total_steps"):
        training.make_trainer("bptt", cfg, seq_len=8, schedule="warmup_cosine")
    with pytest.raises(ValueError, match="clip_norm must be None"):
        training.make_trainer("bptt", cfg, seq_len=8, clip_norm=0.0)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        training.make_trainer("bptt", cfg, seq_len=8, weight_decay=-1.0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        training.make_trainer("bptt", cfg, seq_len=8, warmup_fraction=1.5)
