"""Input checks run at trace time, so bad input fails with a message instead of deep in XLA.

Shape and dtype checks always run; value checks (token range, finite parameters) run only on
concrete arrays, i.e. when a public function is called eagerly rather than inside a caller's jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lru_local.config import Config

_LAYER_SHAPES = {
    "nu_log": lambda c: (c.d_state,),
    "theta": lambda c: (c.d_state,),
    "B_re": lambda c: (c.d_state, c.d_model),
    "B_im": lambda c: (c.d_state, c.d_model),
    "C_re": lambda c: (c.d_model, c.d_state),
    "C_im": lambda c: (c.d_model, c.d_state),
    "D": lambda c: (c.d_model,),
}
# Leaves that exist only under an option: (Config field, value) -> {leaf: shape}.
_OPTIONAL_LAYER_SHAPES = {
    ("gamma", "trainable"): {"gamma_log": lambda c: (c.d_state,)},
    ("block", "lru_glu"): {
        "W1": lambda c: (c.d_model, c.d_model),
        "b1": lambda c: (c.d_model,),
        "W2": lambda c: (c.d_model, c.d_model),
        "b2": lambda c: (c.d_model,),
    },
}


def layer_shapes(cfg: Config) -> dict:
    """{leaf name: shape} of one layer's parameters under cfg."""
    shapes = dict(_LAYER_SHAPES)
    for (field, value), extra in _OPTIONAL_LAYER_SHAPES.items():
        if getattr(cfg, field) == value:
            shapes.update(extra)
    return {name: shape(cfg) for name, shape in shapes.items()}


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_config(cfg) -> None:
    if not isinstance(cfg, Config):
        raise ValueError(
            f"cfg must be an lru_local.Config, got {type(cfg).__name__}; build one with "
            "lru_local.Config(...) or lru_local.Config.from_mapping(config_dict)"
        )


def check_tokens(tokens, cfg: Config, *, min_length: int = 2, name: str = "tokens") -> None:
    """tokens: integer array [B, T] with T >= min_length and values in [0, vocab)."""
    shape = getattr(tokens, "shape", None)
    dtype = getattr(tokens, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{name} must be an integer array [batch, time], got {type(tokens)}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(
            f"{name} must have an integer dtype (bytes as int32), got {dtype}; "
            "convert with tokens.astype(jnp.int32)"
        )
    if len(shape) != 2 or shape[0] < 1 or shape[1] < min_length:
        raise ValueError(
            f"{name} must have shape [batch, time] with batch >= 1 and time >= {min_length} "
            f"(time-1 next-byte predictions), got shape {tuple(shape)}"
        )
    if _is_concrete(tokens) and shape[0] * shape[1] > 0:
        lo, hi = int(np.min(tokens)), int(np.max(tokens))
        if lo < 0 or hi >= cfg.vocab:
            raise ValueError(
                f"{name} must lie in [0, {cfg.vocab - 1}] (cfg.vocab={cfg.vocab}), "
                f"got values in [{lo}, {hi}]"
            )


def check_step_tokens(token, batch: int, cfg: Config, name: str) -> None:
    """token: integer array [B] of one timestep."""
    shape = getattr(token, "shape", None)
    if shape is None or tuple(shape) != (batch,):
        raise ValueError(f"{name} must have shape [batch]=({batch},), got {shape}")
    check_tokens(token[None], cfg, min_length=1, name=name)


def check_params(params, cfg: Config) -> None:
    """params: the pytree of lru_local.init for this cfg, finite, one floating dtype."""
    if not isinstance(params, dict) or set(params) != {"embed", "layers", "heads", "decoder"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(
            f"params must be the dict made by lru_local.init with keys "
            f"['decoder', 'embed', 'heads', 'layers'], got {got}"
        )
    H, V, L = cfg.d_model, cfg.vocab, cfg.depth
    if len(params["layers"]) != L or len(params["heads"]) != L - 1:
        raise ValueError(
            f"params hold {len(params['layers'])} layers and {len(params['heads'])} heads, "
            f"but cfg.depth={L} needs {L} layers and {L - 1} heads"
        )
    expected = {"embed": (V, H), "decoder/W": (H, V), "decoder/b": (V,)}
    for ell in range(L):
        for name, shape in layer_shapes(cfg).items():
            expected[f"layers/{ell}/{name}"] = shape
    for ell in range(L - 1):
        expected[f"heads/{ell}/W"] = (H, H)
        expected[f"heads/{ell}/b"] = (H,)
    flat = {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    if set(flat) != set(expected):
        raise ValueError(
            f"params leaves {sorted(set(flat) ^ set(expected))} do not match cfg "
            f"(block={cfg.block!r}, gamma={cfg.gamma!r}); re-create params with "
            "lru_local.init(key, cfg)"
        )
    dtypes = {jnp.dtype(leaf.dtype) for leaf in flat.values()}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise ValueError(
            f"params must share one real floating dtype, got {sorted(map(str, dtypes))}"
        )
    for name, leaf in flat.items():
        if tuple(leaf.shape) != expected[name]:
            raise ValueError(
                f"params[{name!r}] has shape {tuple(leaf.shape)}, cfg expects {expected[name]} "
                f"(cfg: d_model={H}, d_state={cfg.d_state}, vocab={V})"
            )
    bad = [n for n, leaf in flat.items() if _is_concrete(leaf) and not np.all(np.isfinite(leaf))]
    if bad:
        raise ValueError(f"params contain non-finite values (NaN/inf) in {bad}")


def check_key(key) -> None:
    is_typed = hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    is_raw = hasattr(key, "shape") and tuple(key.shape) == (2,) and key.dtype == jnp.uint32
    if not (is_typed and key.shape == ()) and not is_raw:
        raise ValueError(
            f"key must be one PRNG key (jax.random.key(seed)), got "
            f"{getattr(key, 'dtype', type(key))} of shape {getattr(key, 'shape', None)}"
        )


def check_sequence_call(params, tokens, cfg, key=None) -> None:
    """The checks every whole-sequence entry point runs: cfg, params, tokens [B, T], key."""
    check_config(cfg)
    check_params(params, cfg)
    check_tokens(tokens, cfg)
    if key is not None:
        check_key(key)
