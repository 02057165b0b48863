r"""Sparse gradient transport through attention heads (seeds/rtrl_sparse_paper.txt §4.7–4.8).

The transformer analogue of sparse Jacobian propagation. In a block's multi-head attention every
head h computes its output o_h = softmax(q_h k_hᵀ / √d_h) v_h and contributes to the output
projection in the forward pass; in the backward pass only the heads of a subset S (|S| = k of H)
transport gradient, the paper's Eq. 11:

    õ_h = o_h                     if h ∈ S
    õ_h = stop_gradient(o_h)      otherwise        ("detach": forward unchanged, bit for bit)
    õ_h = 0                       otherwise        ("zero": structured head dropout, forward too)
    a   = concat_h(õ_h) W_O + b_O

S is drawn per layer, uniformly without replacement, from the step's key on every forward pass
("random"), or fixed from per-head importance scores (Fisher or attention entropy, top or bottom
k per layer). A non-selected head's Q, K, V slices (and LN₁, which feeds only Q, K, V) receive
exactly zero gradient through it; W_O's rows of that head still train (their input õ_h is data),
and the residual stream carries gradient past the attention to earlier blocks. With k = 0 the
attention's Q, K, V and LN₁ of every block train not at all (zero gradient), everything else
does: the patch embedding and positions, W_O and b_O, LN₂ and the MLPs, the final LN and the
classifier; attention still mixes tokens in the forward, with its random-init weights.

    model = ViT(image=(28, 28, 1), patch=7)           # embed 192 = 12 heads × 16, depth 4
    params = model.init(key)
    rule = head_transport(model)
    spec = transport_spec(model.heads, k=6, variant="detach", selection="random")
    state = rule.init(key, params, spec)
    state, out = rule.step(params, state, x, y)       # out.grads like params, out.loss []

Per-head importance (§4.8): the Fisher score of head h in layer l is the squared gradient of the
loss over that head's slices of W_Q, b_Q, W_K, b_K, W_V, b_V (columns h·d_h … (h+1)·d_h) and
W_O (rows h·d_h … (h+1)·d_h); b_O is shared by all heads and assigned to none, so the H scores of
a layer sum to ‖∂L/∂(W_Q, b_Q, W_K, b_K, W_V, b_V, W_O)‖². The entropy score is the attention's
peakedness −Σ_j a_ij log a_ij, averaged over queries i and samples.

The continual-learning replay buffer (class-balanced, capacity C) is here too: `ReplayState` and
pure `replay_*` functions, so the whole Split-task run stays one pytree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

# --------------------------------------------------------------------------------------------
# the model


def layer_norm(x, gain, bias, eps=1e-6):
    """(x − mean) / √(var + ε) · gain + bias over the last axis."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * gain + bias


VARIANTS = ("detach", "zero")


def gate_heads(head_out, selected, zero=False):
    """Eq. 11 on one block's head outputs: head_out [B, T, H, d_h], selected bool [H]; zero a
    (traced) bool: the forward-zeroing variant, else detach.

    detach: õ_h = o_h for h ∈ S, stop_gradient(o_h) otherwise (the forward is o bit for bit);
    zero: õ_h = 0 for h ∉ S (the forward changes too)."""
    off = jnp.where(zero, jnp.zeros_like(head_out), jax.lax.stop_gradient(head_out))
    return jnp.where(selected[:, None], head_out, off)


@dataclasses.dataclass(frozen=True)
class ViT:
    """A pre-LN vision transformer: patches → d-dim tokens (+ learned positions), `depth` blocks
    h ← h + MHA(LN₁ h), h ← h + MLP(LN₂ h) (GELU), final LN, mean over tokens, linear classifier.
    embed = heads · head_dim (the paper's 192 = 12 × 16)."""

    image: tuple = (28, 28, 1)  # (H, W, C)
    patch: int = 7
    embed: int = 192
    heads: int = 12
    depth: int = 4
    mlp: int = 384
    classes: int = 10

    def __post_init__(self):
        H, W, _ = self.image
        if H % self.patch or W % self.patch:
            raise ValueError(
                f"patch {self.patch} does not divide the image {self.image}; pick a divisor "
                f"of {H} and {W}"
            )
        if self.embed % self.heads:
            raise ValueError(
                f"embed {self.embed} is not a multiple of heads {self.heads}; set embed = "
                "heads × head_dim"
            )

    @property
    def head_dim(self) -> int:
        return self.embed // self.heads

    @property
    def tokens(self) -> int:
        return (self.image[0] // self.patch) * (self.image[1] // self.patch)

    def init(self, key, dtype=jnp.float32) -> dict:
        """Weights N(0, 0.02²) (ViT's), biases 0, LN gains 1."""
        d, p = self.embed, self.patch
        keys = iter(jax.random.split(key, 6 * self.depth + 3))

        def dense(n_in, n_out):
            w = 0.02 * jax.random.normal(next(keys), (n_in, n_out), dtype)
            return {"W": w, "b": jnp.zeros((n_out,), dtype)}

        def norm():
            return {"g": jnp.ones((d,), dtype), "b": jnp.zeros((d,), dtype)}

        embed = dense(p * p * self.image[2], d)
        embed["P"] = 0.02 * jax.random.normal(next(keys), (self.tokens, d), dtype)
        blocks = []
        for _ in range(self.depth):
            block = {"ln1": norm(), "ln2": norm()}
            for name in ("q", "k", "v", "o"):
                block[name] = dense(d, d)
            block["fc1"] = dense(d, self.mlp)
            block["fc2"] = dense(self.mlp, d)
            blocks.append(block)
        return {"embed": embed, "blocks": blocks, "ln": norm(), "head": dense(d, self.classes)}

    def patches(self, x):
        """x [B, H, W, C] -> [B, T, p·p·C]."""
        B, H, W, C = x.shape
        p = self.patch
        x = x.reshape(B, H // p, p, W // p, p, C).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(B, self.tokens, p * p * C)

    def apply_with_entropy(self, params, x, gates=None, zero=False):
        """x [B, H, W, C] float -> (logits [B, classes], attention entropy [depth, H]).

        gates: bool [depth, H], the heads that transport gradient per block (None: all, the
        dense model); zero: the others are zeroed, else detached (see `gate_heads`). The
        entropy of head h is the mean over samples and queries of −Σ_j a_ij log a_ij."""
        B = x.shape[0]
        e = params["embed"]
        h = self.patches(x) @ e["W"] + e["b"] + e["P"]
        entropies = []
        for l, bp in enumerate(params["blocks"]):
            u = layer_norm(h, bp["ln1"]["g"], bp["ln1"]["b"])

            def split(name, u=u, bp=bp):
                return (u @ bp[name]["W"] + bp[name]["b"]).reshape(
                    B, self.tokens, self.heads, self.head_dim
                )

            q, k, v = split("q"), split("k"), split("v")
            logits = jnp.einsum("bqhe,bkhe->bhqk", q, k) / jnp.sqrt(
                jnp.asarray(self.head_dim, x.dtype)
            )
            weights = jax.nn.softmax(logits, axis=-1)
            entropy = -jnp.sum(weights * jax.nn.log_softmax(logits, axis=-1), axis=-1)
            entropies.append(jnp.mean(entropy, axis=(0, 2)))
            out = jnp.einsum("bhqk,bkhe->bqhe", weights, v)  # o_h: [B, T, H, d_h]
            if gates is not None:
                out = gate_heads(out, gates[l], zero)
            h = h + out.reshape(B, self.tokens, self.embed) @ bp["o"]["W"] + bp["o"]["b"]
            u = layer_norm(h, bp["ln2"]["g"], bp["ln2"]["b"])
            z = jax.nn.gelu(u @ bp["fc1"]["W"] + bp["fc1"]["b"])
            h = h + z @ bp["fc2"]["W"] + bp["fc2"]["b"]
        h = layer_norm(h, params["ln"]["g"], params["ln"]["b"])
        logits = jnp.mean(h, axis=1) @ params["head"]["W"] + params["head"]["b"]
        return logits, jnp.stack(entropies)

    def apply(self, params, x, gates=None, zero=False):
        """x [B, H, W, C] float -> logits [B, classes]; gates as in `apply_with_entropy`."""
        return self.apply_with_entropy(params, x, gates, zero)[0]


def cross_entropy(logits, y, weights=None):
    """Σ_i w_i CE(logits_i, y_i) / max(Σ_i w_i, 1) (w = 1 when None): logits [B, C], y int [B]."""
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]
    if weights is None:
        return jnp.mean(ce)
    weights = weights.astype(ce.dtype)
    return jnp.sum(weights * ce) / jnp.maximum(jnp.sum(weights), 1.0)


# --------------------------------------------------------------------------------------------
# head subsets


def _check_k(k, heads: int) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= heads:
        raise ValueError(f"k = {k!r} heads must be an int in [0, {heads}] (the heads per block)")
    return k


def sample_heads(key, depth: int, heads: int, k):
    """bool [depth, heads]: per block, k heads uniformly without replacement (independent per
    block), ranked by i.i.d. uniform noise from `key`. k: an int, or a traced int (unchecked)."""
    if not isinstance(k, jax.Array):
        _check_k(k, heads)
    noise = jax.random.uniform(key, (depth, heads))
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return rank < k


def top_heads(scores, k, top=True):
    """bool [depth, heads]: per block the k heads of highest (top) or lowest score; ties go to
    the lower head index. scores [depth, heads]; k and top may be traced."""
    if not isinstance(k, jax.Array):
        _check_k(k, scores.shape[1])
    order = jnp.argsort(jnp.where(top, -scores, scores), axis=1, stable=True)
    rank = jnp.argsort(order, axis=1)
    return rank < k


class Selection(NamedTuple):
    score: str | None  # key of `head_scores`' output, None: random per forward pass
    top: bool  # the k highest scores (else the k lowest)


SELECTIONS: dict[str, Selection] = {
    "random": Selection(None, True),
    "fisher_top": Selection("fisher", True),  # the paper's "Fisher oracle"
    "fisher_bottom": Selection("fisher", False),  # "Fisher anti-oracle"
    "entropy_top": Selection("peakedness", True),  # the most peaked (lowest-entropy) heads
    "entropy_bottom": Selection("peakedness", False),  # the most uniform heads
}


def get_selection(name: str) -> Selection:
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection {name!r}; use one of {sorted(SELECTIONS)}")
    return SELECTIONS[name]


# --------------------------------------------------------------------------------------------
# per-head importance


def head_fisher(model: ViT, grads) -> jax.Array:
    """[depth, heads]: F_lh = Σ_{θ ∈ head h's slices of block l's W_Q, b_Q, W_K, b_K, W_V, b_V,
    W_O} (∂L/∂θ)², from one gradient pytree `grads` (like params). Σ_h F_lh is the squared norm
    of those parameters' gradient; b_O (shared) is in no head."""
    H, dh = model.heads, model.head_dim
    rows = []
    for g in grads["blocks"]:
        total = 0.0
        for name in ("q", "k", "v"):
            w = jnp.square(g[name]["W"]).reshape(-1, H, dh)  # columns of head h
            total = (
                total
                + jnp.sum(w, axis=(0, 2))
                + jnp.sum(jnp.square(g[name]["b"]).reshape(H, dh), 1)
            )
        total = total + jnp.sum(jnp.square(g["o"]["W"]).reshape(H, dh, -1), axis=(1, 2))
        rows.append(total)
    return jnp.stack(rows)


def head_scores(model: ViT, params, xs, ys) -> dict:
    """Per-head importance from M minibatches xs [M, B, H, W, C] (normalised), ys int [M, B] at
    `params`, all heads transporting gradient:

        fisher     [depth, heads]  (1/M) Σ_m head_fisher(∂L_m/∂θ)   (L_m: mean CE of batch m)
        peakedness [depth, heads]  −(1/M) Σ_m mean attention entropy of batch m
    """

    def one(carry, batch):
        x, y = batch

        def loss(p):
            logits, entropy = model.apply_with_entropy(p, x)
            return cross_entropy(logits, y), entropy

        grads, entropy = jax.grad(loss, has_aux=True)(params)
        fisher, peak = carry
        return (fisher + head_fisher(model, grads), peak - entropy), None

    zeros = jnp.zeros((model.depth, model.heads), xs.dtype)
    (fisher, peak), _ = jax.lax.scan(one, (zeros, zeros), (xs, ys))
    m = xs.shape[0]
    return {"fisher": fisher / m, "peakedness": peak / m}


def spearman(a, b):
    """Spearman rank correlation of two score vectors [n] (ties broken by index)."""
    ra = jnp.argsort(jnp.argsort(a)).astype(jnp.float64 if a.dtype == jnp.float64 else jnp.float32)
    rb = jnp.argsort(jnp.argsort(b)).astype(ra.dtype)
    ra, rb = ra - jnp.mean(ra), rb - jnp.mean(rb)
    return jnp.sum(ra * rb) / jnp.sqrt(jnp.sum(ra * ra) * jnp.sum(rb * rb))


# --------------------------------------------------------------------------------------------
# the learning rule


SCORES = ("fisher", "peakedness")  # the keys of `head_scores`, in TransportSpec.score order


class TransportSpec(NamedTuple):
    """One condition as arrays, so conditions can be lanes of one vmapped program."""

    k: jax.Array  # [] int32 heads per block that transport gradient
    zero: jax.Array  # [] bool the forward-zeroing variant (else detach)
    score: jax.Array  # [] int32 index into SCORES of a fixed selection; −1: random per forward
    top: jax.Array  # [] bool a fixed selection takes the k highest scores (else the lowest)


def transport_spec(heads: int, k: int, variant: str = "detach", selection: str = "random"):
    """The TransportSpec of k of `heads` heads, a variant ("detach", "zero") and a selection
    (SELECTIONS); raises ValueError on a bad value, naming the fix."""
    _check_k(k, heads)
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {list(VARIANTS)}")
    chosen = get_selection(selection)
    score = -1 if chosen.score is None else SCORES.index(chosen.score)
    return TransportSpec(
        jnp.asarray(k, jnp.int32),
        jnp.asarray(variant == "zero"),
        jnp.asarray(score, jnp.int32),
        jnp.asarray(chosen.top),
    )


class HeadTransportState(NamedTuple):
    key: jax.Array  # typed PRNG key; forward pass t draws its heads from fold_in(key, t)
    count: jax.Array  # [] int32 forward passes so far
    fixed: jax.Array  # bool [depth, heads] the fixed selection (score selections)
    spec: TransportSpec  # the condition


class TransportOut(NamedTuple):
    grads: dict  # like params
    loss: jax.Array  # [] the weighted mean cross-entropy
    gates: jax.Array  # bool [depth, heads] the heads that transported gradient


class HeadTransport(NamedTuple):
    """init(key, params, spec) -> state; step(params, state, x, y, weights=None, dense=False)
    -> (state, TransportOut); select(state, scores) -> state whose fixed selection comes from
    `head_scores`' output (score selections; random ignores it)."""

    init: Callable
    step: Callable
    select: Callable


def head_transport(model: ViT) -> HeadTransport:
    """The sparse-transport rule: the gradient of the (weighted) cross-entropy of the gated
    model, the condition in the state (`transport_spec`), so one program serves every condition.

    step's gates: every head when `dense` (a traced bool: the dense phase of a schedule), else
    `sample_heads(fold_in(key, count), depth, heads, k)` for a random selection (a new subset
    every forward pass) or the state's fixed selection (every head before `select`)."""
    shape = (model.depth, model.heads)

    def init(key, params, spec: TransportSpec):
        del params
        return HeadTransportState(key, jnp.zeros((), jnp.int32), jnp.ones(shape, bool), spec)

    def gates_of(state, dense):
        spec = state.spec
        drawn = sample_heads(jax.random.fold_in(state.key, state.count), *shape, spec.k)
        gates = jnp.where(spec.score < 0, drawn, state.fixed)
        return jnp.logical_or(gates, dense)

    def step(params, state, x, y, weights=None, dense=False):
        gates = gates_of(state, jnp.asarray(dense))

        def loss(p):
            return cross_entropy(model.apply(p, x, gates, state.spec.zero), y, weights)

        value, grads = jax.value_and_grad(loss)(params)
        return state._replace(count=state.count + 1), TransportOut(grads, value, gates)

    def select(state, scores):
        spec = state.spec
        stacked = jnp.stack([scores[name] for name in SCORES])
        chosen = top_heads(stacked[jnp.maximum(spec.score, 0)], spec.k, spec.top)
        return state._replace(fixed=jnp.where(spec.score < 0, state.fixed, chosen))

    return HeadTransport(init, step, select)


# --------------------------------------------------------------------------------------------
# the class-balanced replay buffer


class ReplayState(NamedTuple):
    images: jax.Array  # uint8 [classes, per_class, H, W, C] stored samples, by class
    filled: jax.Array  # int32 [classes] slots of each class's row in use (≤ per_class)


def replay_init(classes: int, per_class: int, image_shape) -> ReplayState:
    """An empty buffer with a row of `per_class` slots per class."""
    return ReplayState(
        jnp.zeros((classes, per_class, *image_shape), jnp.uint8), jnp.zeros((classes,), jnp.int32)
    )


def replay_add(state: ReplayState, x, y) -> ReplayState:
    """Stores x [B, H, W, C] uint8 of classes y int [B] in their rows' next free slots (samples
    beyond a full row are dropped). Offered in a random order, each row then holds a uniform
    random subset of its class (the first `per_class` of that order)."""
    same = (y[:, None] == y[None, :]) & (
        jnp.arange(y.shape[0])[None, :] < jnp.arange(y.shape[0])[:, None]
    )
    slot = state.filled[y] + jnp.sum(same, axis=1)
    per_class = state.images.shape[1]
    slot = jnp.where(slot < per_class, slot, per_class)  # out of range: dropped
    images = state.images.at[y, slot].set(x, mode="drop")
    counts = jnp.zeros_like(state.filled).at[y].add(1)
    return ReplayState(images, jnp.minimum(state.filled + counts, per_class))


def replay_sample(state: ReplayState, key, n: int, past, capacity: int):
    """n replay samples from the classes marked in past (bool [classes]), class-balanced:

    the buffer of the past classes P holds q = capacity // |P| samples of each (the first q of
    its row, itself a uniform subset), so at most `capacity` in all; a draw picks a class of P
    uniformly, then one of its min(filled, q) samples uniformly.
    Returns x uint8 [n, H, W, C], y int32 [n], valid bool [n] (False when P is empty)."""
    n_past = jnp.sum(past)
    quota = capacity // jnp.maximum(n_past, 1)
    count = jnp.minimum(state.filled, quota)
    k_class, k_slot = jax.random.split(key)
    logits = jnp.where(past & (count > 0), 0.0, -jnp.inf)
    y = jax.random.categorical(k_class, logits, shape=(n,))
    y = jnp.where(n_past > 0, y, 0).astype(jnp.int32)
    u = jax.random.uniform(k_slot, (n,))
    slot = jnp.minimum((u * count[y]).astype(jnp.int32), jnp.maximum(count[y] - 1, 0))
    valid = jnp.broadcast_to(n_past > 0, (n,)) & (count[y] > 0)
    return state.images[y, slot], y, valid


__all__ = [
    "SCORES",
    "SELECTIONS",
    "VARIANTS",
    "HeadTransport",
    "HeadTransportState",
    "ReplayState",
    "Selection",
    "TransportOut",
    "TransportSpec",
    "ViT",
    "cross_entropy",
    "gate_heads",
    "get_selection",
    "head_fisher",
    "head_scores",
    "head_transport",
    "layer_norm",
    "replay_add",
    "replay_init",
    "replay_sample",
    "sample_heads",
    "spearman",
    "top_heads",
    "transport_spec",
]
