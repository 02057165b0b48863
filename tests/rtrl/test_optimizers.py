"""The optimizer registry: hand-computed steps, PyTorch's RMSprop, β1-only Adam, vmapped lrs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rtrl import optimizers

G1, G2 = 1e-4, -3e-4  # gradients of the size the immediate-derivative paper trains on


def _two_steps(name, lr=1e-2, **hyper):
    tx = optimizers.get(name, lr, **hyper)
    params = jnp.zeros((), jnp.float64)
    state = tx.init(params)
    out = []
    for g in (G1, G2):
        update, state = tx.update(jnp.float64(g), state, params)
        out.append(float(update))
    return out


def test_rmsprop_is_pytorch_rmsprop_on_a_tiny_gradient():
    # PyTorch: v_t = 0.99 v_{t-1} + 0.01 g², Δ = −lr g / (√v_t + 1e-8), v_0 = 0.
    v1 = 0.01 * G1**2
    v2 = 0.99 * v1 + 0.01 * G2**2
    want = [-1e-2 * G1 / (np.sqrt(v1) + 1e-8), -1e-2 * G2 / (np.sqrt(v2) + 1e-8)]
    np.testing.assert_allclose(_two_steps("rmsprop"), want, rtol=1e-12)
    # step 1 is −lr·g/(0.1|g| + 1e-8) ≈ −10 lr sign(g); optax's own defaults (decay 0.9, ε inside
    # the square root: √(0.1 g² + 1e-8) ≈ 1.05e-4) give ≈ −0.95 lr: an 10× smaller step.
    assert _two_steps("rmsprop")[0] == pytest.approx(-0.1, rel=1e-3)
    optax_default = optax.rmsprop(1e-2)
    update, _ = optax_default.update(jnp.float64(G1), optax_default.init(jnp.float64(0.0)))
    assert float(update) == pytest.approx(-1e-2 * G1 / np.sqrt(0.1 * G1**2 + 1e-8), rel=1e-12)
    assert _two_steps("rmsprop")[0] / float(update) > 10


def test_adam_b1_only_is_a_debiased_momentum_without_second_moment():
    m1 = 0.1 * G1
    m2 = 0.9 * m1 + 0.1 * G2
    want = [-1e-2 * m1 / (1 - 0.9), -1e-2 * m2 / (1 - 0.9**2)]
    np.testing.assert_allclose(_two_steps("adam_b1_only"), want, rtol=1e-12)


def test_adam_b2_only_and_adam_and_sgd_and_momentum():
    v1 = 0.001 * G1**2
    v2 = 0.999 * v1 + 0.001 * G2**2
    b2_only = [
        -1e-2 * G1 / (np.sqrt(v1 / 0.001) + 1e-8),
        -1e-2 * G2 / (np.sqrt(v2 / (1 - 0.999**2)) + 1e-8),
    ]
    np.testing.assert_allclose(_two_steps("adam_b2_only"), b2_only, rtol=1e-12)
    m1, m2 = 0.1 * G1, 0.9 * 0.1 * G1 + 0.1 * G2
    adam = [
        -1e-2 * (m1 / 0.1) / (np.sqrt(v1 / 0.001) + 1e-8),
        -1e-2 * (m2 / (1 - 0.81)) / (np.sqrt(v2 / (1 - 0.999**2)) + 1e-8),
    ]
    np.testing.assert_allclose(_two_steps("adam"), adam, rtol=1e-12)
    np.testing.assert_allclose(_two_steps("sgd"), [-1e-2 * G1, -1e-2 * G2], rtol=1e-12)
    np.testing.assert_allclose(
        _two_steps("momentum"), [-1e-2 * G1, -1e-2 * (0.9 * G1 + G2)], rtol=1e-12
    )


def test_adam_with_b2_zero_is_not_b1_only():
    assert not np.allclose(_two_steps("adam", b2=0.0), _two_steps("adam_b1_only"))


def test_learning_rate_lives_in_the_state_and_vmaps():
    params = {"w": jnp.ones(2, jnp.float64)}
    grads = {"w": jnp.asarray([1.0, -2.0], jnp.float64)}
    lrs = jnp.asarray([0.1, 0.01], jnp.float64)
    tx = optimizers.get("sgd")

    def one(lr):
        return tx.update(grads, optimizers.get("sgd", lr).init(params), params)[0]["w"]

    np.testing.assert_allclose(jax.vmap(one)(lrs), -lrs[:, None] * grads["w"], rtol=1e-15)
    state = optimizers.with_learning_rate(tx.init(params), 0.5)
    assert float(optimizers.learning_rate(state)) == 0.5
    assert optimizers.learning_rate(state).dtype == jnp.float64  # the parameters' dtype


def test_unknown_names_and_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; known optimizers"):
        optimizers.get("lbfgs")
    with pytest.raises(ValueError, match="optimizer 'sgd' does not take"):
        optimizers.get("sgd", 1.0, b1=0.9)


def test_switch_runs_the_first_then_a_fresh_second():
    """Adam for 3 steps, then SGD (lr 0.1) from its own init; and a frozen model (lr 0)."""
    grads = [jnp.float64(g) for g in (1.0, -2.0, 0.5, 3.0, -1.0)]
    adam = optimizers.get("adam", 1e-2)
    tx = optimizers.switch(adam, optimizers.get("sgd", 0.1), at=3)
    state, ref_state = tx.init(jnp.float64(0.0)), adam.init(jnp.float64(0.0))
    got = []
    for g in grads:
        update, state = tx.update(g, state, None)
        got.append(float(update))
    want = []
    for g in grads[:3]:
        update, ref_state = adam.update(g, ref_state, None)
        want.append(float(update))
    want += [-0.1 * float(g) for g in grads[3:]]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    frozen = optimizers.switch(adam, optimizers.get("sgd", 0.0), at=2)
    state = frozen.init(jnp.float64(0.0))
    updates = []
    for g in grads:
        update, state = frozen.update(g, state, None)
        updates.append(float(update))
    assert updates[0] != 0.0 and updates[1] != 0.0 and updates[2:] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="switch step"):
        optimizers.switch(adam, adam, at=-1)
