"""Bad input fails early with a ValueError that names the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lru_local

CFG = lru_local.Config(d_model=4, d_state=3, depth=2)
PARAMS = lru_local.init(jax.random.key(0), CFG)
TOKENS = jnp.array([[1, 2, 3, 4]], jnp.int32)
KEY = jax.random.key(1)

ENTRY_POINTS = {
    "local_grads": lambda p, x, c: lru_local.local_grads(p, x, KEY, c),
    "local_grads_autodiff": lambda p, x, c: lru_local.local_grads_autodiff(p, x, KEY, c),
    "local_grads_jvp": lambda p, x, c: lru_local.local_grads_jvp(p, x, KEY, c),
    "bptt_grads": lru_local.bptt_grads,
    "apply": lru_local.apply,
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (TOKENS.astype(jnp.float32), "integer dtype"),
        (jnp.array([1, 2, 3], jnp.int32), r"shape \[batch, time\]"),
        (jnp.array([[1]], jnp.int32), "time >= 2"),
        (jnp.array([[1, 256, 3]], jnp.int32), r"\[0, 255\]"),
        (jnp.array([[1, -1, 3]], jnp.int32), r"\[0, 255\]"),
    ],
)
def test_bad_tokens(entry, tokens, message):
    with pytest.raises(ValueError, match=message):
        ENTRY_POINTS[entry](PARAMS, tokens, CFG)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_non_finite_parameters(entry):
    params = jax.tree_util.tree_map(lambda x: x, PARAMS)
    params["layers"][1]["theta"] = params["layers"][1]["theta"].at[0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"non-finite.*\['layers/1/theta'\]"):
        ENTRY_POINTS[entry](params, TOKENS, CFG)


def test_params_that_do_not_match_the_config():
    with pytest.raises(ValueError, match="cfg.depth=3 needs 3 layers"):
        lru_local.local_grads(PARAMS, TOKENS, KEY, lru_local.Config(d_model=4, d_state=3, depth=3))
    with pytest.raises(
        ValueError, match=r"params\['decoder/W'\] has shape \(4, 256\), cfg expects \(5, 256\)"
    ):
        lru_local.bptt_grads(PARAMS, TOKENS, lru_local.Config(d_model=5, d_state=3, depth=2))
    with pytest.raises(ValueError, match="keys"):
        lru_local.apply({"layers": []}, TOKENS, CFG)
    with pytest.raises(ValueError, match="lru_local.Config"):
        lru_local.apply(PARAMS, TOKENS, {"d_model": 4})


def test_unknown_and_invalid_config_keys():
    with pytest.raises(ValueError, match=r"unknown lru_local.Config key\(s\) \['d_modle'\]"):
        lru_local.Config.from_mapping({"d_modle": 4})
    assert lru_local.Config.from_mapping({"d_model": 4}).d_model == 4
    with pytest.raises(ValueError, match="r_min < r_max"):
        lru_local.Config(r_min=0.99, r_max=0.9)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        lru_local.Config(depth=0)


def test_bad_key_and_online_inputs():
    with pytest.raises(ValueError, match="one PRNG key"):
        lru_local.local_grads(PARAMS, TOKENS, jax.random.split(KEY, 2), CFG)
    carry = lru_local.online_init(PARAMS, 2, CFG)
    with pytest.raises(ValueError, match=r"token_t must have shape \[batch\]"):
        lru_local.online_step(PARAMS, carry, jnp.array([1, 2, 3]), jnp.array([1, 2]), KEY, CFG)
    with pytest.raises(ValueError, match=r"token_next must lie in \[0, 255\]"):
        lru_local.online_step(PARAMS, carry, jnp.array([1, 2]), jnp.array([1, 999]), KEY, CFG)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        lru_local.online_init(PARAMS, 0, CFG)


def test_value_checks_are_skipped_under_an_outer_jit_but_shapes_still_checked():
    """Inside a caller's jit the token range cannot be read; the shape check still fires."""
    grads_fn = jax.jit(lambda p, x: lru_local.local_grads(p, x, KEY, CFG)[1])
    grads = grads_fn(PARAMS, TOKENS)
    assert np.isfinite(np.asarray(grads["layers"][0]["B_re"])).all()
    with pytest.raises(ValueError, match="integer dtype"):
        grads_fn(PARAMS, TOKENS.astype(jnp.float32))
