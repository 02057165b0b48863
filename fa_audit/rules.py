"""Credit-assignment methods as rules of the shared contract (`init(key, params) -> state`,
`step(params, state, x, labels) -> (state, out)`, out.grads like params, out.loss), for any model
of `fa_audit.models` (embed / block / next_state / readout / forward).

- bp: out.grads = jax.grad of the mean cross-entropy L (+ the penalty, when λ > 0).
- fa (Lillicrap et al. 2016; dense-block models): the backward pass of every dense map inside the
  blocks and the embedding uses a fixed random matrix B of the weight's shape in place of W
  (δ_in = δ_out Bᵀ), weight gradients xᵀδ as usual; the head and every norm backpropagate exactly.
- dfa (Nøkland 2016), as the audit paper writes it: the output error e_T = ∂L/∂logits [B, K] is
  sent through a fixed random B_l [K, *f_l's shape] to every block, whose local loss is
  ⟨f_l(h_l), e_T B_l⟩ summed over the batch (h_l stop-gradded: no gradient crosses blocks), and
  ⟨h_0, e_T B_emb⟩ for the embedding; the head gets its exact gradient. `dfa_signals` returns the
  e_T B_l themselves (the Mode-2 measurement's local credit).
- ep (equilibrium propagation, Scellier & Bengio 2017, symmetric nudging of Laborieux et al.
  2021), the variant compatible with a feedforward residual network: the states h_1..h_L are free
  variables of the prediction-error energy
      E(h) = (1/B) Σ_b Σ_l ½ ‖h_{l+1} − next_l(h_l)‖²,   F_β(h) = E(h) + β L(readout(h_L)),
  with h_0 = embed(x) clamped. The free phase's equilibrium (β = 0, E = 0) is the feedforward
  pass. Each nudged phase relaxes from it, at +β and −β, by `relax_steps` sweeps of the
  stationarity conditions of F_β (per sample e_{L−1} = −β ∂ℓ/∂h_L, e_l = J_{l+1}ᵀ e_{l+1}, with
  e_l = h_{l+1} − next_l(h_l), J_{l+1} = ∂next_{l+1}/∂h): errors top-down at the current states,
  then states bottom-up, damped by η;
      ĝ = (∂F_β/∂θ(h^{+β}) − ∂F_{−β}/∂θ(h^{−β})) / (2β).
  At converged equilibria ĝ → ∇_θ L (BP) as β → 0 (tested); finite β and relax_steps make it
  an estimate. Plain gradient descent on h is the textbook dynamics, but this energy is stiff
  (the blocks' LayerNorm Jacobians): it diverged at step sizes that would converge in hundreds
  of steps; each sweep contracts the distance to the equilibrium by O(β). Defaults (ours; the
  audit gives none): β = 0.1, 8 sweeps, η = 1.
- state_bridge (our reading of "terminal-conditioned predictor"; no public definition): a linear
  predictor Q_j(h) = h A_j + c_j (A_j = I at init) of the terminal state h_L from each state h_j,
  j < L, fit online by ½‖Q_j(h_j) − h_L‖² (stop-gradded, its own Adam); block l < L−1 (and the
  embedding, j = 0) descends L(readout(Q_{l+1}(h_{l+1}))) with h_l stop-gradded and Q fixed; the
  last block's output is h_L and takes L directly.
- credit_bridge (our reading of "value-field local credit without hidden BP"): a value network
  V_j(h) = GELU(h U_j + a_j) v_j + c_j predicting each sample's loss ℓ_b from h_j, fit online by
  ½(V_j(h_j) − ℓ_b)² (stop-gradded, its own Adam); block l < L−1 (and the embedding) descends the
  value field: mean_b V_{l+1}(h_{l+1}) with h_l stop-gradded and V fixed; the last block takes L.
Every local method takes `penalty` λ: + λ mean_b ‖f_l(h_l)‖² per block, the paper's
residual-stream penalty. Random feedback and bridge predictors live in the rule's state, so
checkpoints carry them (pitfall 7; `auxiliary` names what must be there); B ~ N(0, 1/fan).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fa_audit.models import ResidualMLP, cross_entropy, layer_norm


class StepOutput(NamedTuple):
    grads: dict
    loss: jax.Array


class Rule(NamedTuple):
    name: str
    init: callable
    step: callable


class FeedbackState(NamedTuple):
    feedback: dict  # the fixed random matrices, persisted with the rule


class BridgeState(NamedTuple):
    predictors: list  # one per state h_0 … h_{L−1}
    opt: object  # the predictors' own Adam state
    fit: jax.Array  # the predictors' last regression loss (mean over them)


def _normal(key, shape, fan, dtype):
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(fan, dtype))


def _sq_norm(f):
    """mean_b ‖f_b‖² over every non-batch axis."""
    return jnp.mean(jnp.sum(f.reshape(f.shape[0], -1) ** 2, axis=-1))


def _dtype(params):
    return params["head"]["W"].dtype


def bp(model, penalty: float = 0.0) -> Rule:
    """penalty λ > 0: the end-to-end loss L + λ Σ_l mean_b ‖f_l(h_l)‖² (Table 5's BP + penalty)."""

    def init(key, params):
        return FeedbackState({})

    def step(params, state, x, labels):
        def loss(p):
            logits, _, branches = model.forward(p, x)
            return cross_entropy(logits, labels) + penalty * sum(_sq_norm(f) for f in branches)

        value, grads = jax.value_and_grad(loss)(params)
        return state, StepOutput(grads, value)

    return Rule("bp", init, step)


@jax.custom_vjp
def _fa_matmul(x, W, B):
    return x @ W


def _fa_fwd(x, W, B):
    return x @ W, (x, B)


def _fa_bwd(res, g):
    x, B = res
    return g @ B.T, x.T @ g, jnp.zeros_like(B)


_fa_matmul.defvjp(_fa_fwd, _fa_bwd)


def fa(model, penalty: float = 0.0) -> Rule:
    if not isinstance(model, ResidualMLP):
        raise ValueError(
            f"fa replaces each dense map's transpose, which needs a dense-block model "
            f"(ResidualMLP / student_net); got {type(model).__name__}: use dfa there"
        )

    def init(key, params):
        keys = jax.random.split(key, 2 * len(params["blocks"]) + 1)
        W = params["embed"]["W"]
        feedback = {"embed": _normal(keys[-1], W.shape, W.shape[1], W.dtype), "blocks": []}
        for l, block in enumerate(params["blocks"]):
            feedback["blocks"].append(
                {
                    "W1": _normal(keys[2 * l], block["W1"].shape, block["W1"].shape[1], W.dtype),
                    "W2": _normal(
                        keys[2 * l + 1], block["W2"].shape, block["W2"].shape[1], W.dtype
                    ),
                }
            )
        return FeedbackState(feedback)

    def step(params, state, x, labels):
        B = state.feedback

        def loss(p):
            x_flat = x.reshape(x.shape[0], -1)
            h = _fa_matmul(x_flat, p["embed"]["W"], B["embed"]) + p["embed"]["b"]
            extra = 0.0
            for bp_, bb in zip(p["blocks"], B["blocks"], strict=True):
                z = jax.nn.gelu(_fa_matmul(layer_norm(h), bp_["W1"], bb["W1"]) + bp_["b1"])
                f = _fa_matmul(z, bp_["W2"], bb["W2"]) + bp_["b2"]
                extra = extra + penalty * _sq_norm(f)
                h = h + f
            return cross_entropy(model.readout(p, h), labels) + extra

        value, grads = jax.value_and_grad(loss)(params)
        return state, StepOutput(grads, value)

    return Rule("fa", init, step)


def _head_grads(model, params, h_L, labels):
    return jax.grad(lambda p: cross_entropy(model.readout(p, jax.lax.stop_gradient(h_L)), labels))(
        params
    )["head"]


def _local_block_grads(params, hidden, block_loss):
    """[∇ block_loss(l, params_l, h_l) for each block], h_l stop-gradded."""
    return [
        jax.grad(lambda bp_, l=l, h=h: block_loss(l, bp_, jax.lax.stop_gradient(h)))(bp_)
        for l, (bp_, h) in enumerate(zip(params["blocks"], hidden[:-1], strict=True))
    ]


def _embed_grads(model, params, x, state_loss):
    """∇ of state_loss(h_0) over the embedding's parameters (empty for a parameter-free one)."""
    if not jax.tree.leaves(params["embed"]):
        return params["embed"]
    return jax.grad(lambda p: state_loss(model.embed({**params, "embed": p}, x)))(params["embed"])


def _state_shapes(model, params):
    """Per-sample shapes of [h_0, …, h_L] and [f_0, …, f_{L−1}] for the model's input."""
    x = jax.ShapeDtypeStruct((1, *model.input_shape), _dtype(params))
    _, hidden, branches = jax.eval_shape(model.forward, params, x)
    return [h.shape[1:] for h in hidden], [f.shape[1:] for f in branches]


def dfa(model, penalty: float = 0.0) -> Rule:
    def init(key, params):
        hidden, branches = _state_shapes(model, params)
        K, dtype = params["head"]["W"].shape[1], _dtype(params)
        keys = jax.random.split(key, len(branches) + 1)
        return FeedbackState(
            {
                "embed": _normal(keys[-1], (K, *hidden[0]), K, dtype),
                "blocks": [
                    _normal(k, (K, *s), K, dtype) for k, s in zip(keys, branches, strict=False)
                ],
            }
        )

    def step(params, state, x, labels):
        logits, hidden, _ = model.forward(params, x)
        value = cross_entropy(logits, labels)
        signals = _project(_output_error(logits, labels), state.feedback)

        def block_loss(l, bp_, h_l):
            f = model.block(l, bp_, h_l)
            return jnp.sum(f * signals["blocks"][l]) + penalty * _sq_norm(f)

        grads = {
            "embed": _embed_grads(model, params, x, lambda h0: jnp.sum(h0 * signals["embed"])),
            "blocks": _local_block_grads(params, hidden, block_loss),
            "head": _head_grads(model, params, hidden[-1], labels),
        }
        return state, StepOutput(grads, value)

    return Rule("dfa", init, step)


def _output_error(logits, labels):
    """e_T = ∂L/∂logits [B, K] of the mean cross-entropy."""
    return jax.grad(lambda z: cross_entropy(z, labels))(logits)


def _project(e_T, feedback):
    def one(B):
        return jax.lax.stop_gradient(jnp.tensordot(e_T, B, axes=1))

    return {"embed": one(feedback["embed"]), "blocks": [one(B) for B in feedback["blocks"]]}


def dfa_signals(model, params, state: FeedbackState, x, labels) -> list:
    """DFA's local credit e_T B_l for every block, [B, *f_l's shape] each (the signal whose
    cosine with ∂L/∂h_{l+1} the Mode-2 measurement reads)."""
    logits = model.forward(params, x)[0]
    return _project(_output_error(logits, labels), state.feedback)["blocks"]


def ep(
    model, beta: float = 0.1, relax_steps: int = 8, step_size: float = 1.0, penalty: float = 0.0
) -> Rule:
    if beta <= 0 or relax_steps < 1 or not 0 < step_size <= 1:
        raise ValueError(
            f"ep needs beta > 0, relax_steps >= 1 and 0 < step_size <= 1; got {beta}, "
            f"{relax_steps}, {step_size}"
        )

    def total_energy(params, free, h_0, labels, b):
        """F_b(h) = E(h) + b L(readout(h_L)); free = [h_1, …, h_L]."""
        states = [h_0, *free]
        energy = 0.0
        for l, bp_ in enumerate(params["blocks"]):
            e = states[l + 1] - model.next_state(l, bp_, states[l])
            energy = energy + 0.5 * jnp.mean(jnp.sum(e.reshape(e.shape[0], -1) ** 2, axis=-1))
        return energy + b * cross_entropy(model.readout(params, states[-1]), labels)

    def relax(params, free, h_0, labels, b):
        """Sweeps of the per-sample stationarity conditions of F_b: errors top-down at the
        current states, e_{L−1} = −b ∂ℓ/∂h_L, e_l = J_{l+1}ᵀ e_{l+1}; then states bottom-up,
        h_{l+1} = next_l(h_l) + e_l (damped by η)."""
        L = len(params["blocks"])
        top = jax.grad(lambda h: cross_entropy(model.readout(params, h), labels))

        def sweep(free, _):
            states = [h_0, *free]
            errors = [None] * L
            errors[L - 1] = -b * h_0.shape[0] * top(states[L])  # per-sample ∂ℓ/∂h_L
            for l in range(L - 2, -1, -1):
                _, vjp = jax.vjp(
                    lambda h, l=l: model.next_state(l + 1, params["blocks"][l + 1], h),
                    states[l + 1],
                )
                errors[l] = vjp(errors[l + 1])[0]
            moved, h = [], h_0
            for l in range(L):
                target = model.next_state(l, params["blocks"][l], h) + errors[l]
                h = (1 - step_size) * free[l] + step_size * target
                moved.append(h)
            return moved, None

        free, _ = jax.lax.scan(sweep, free, None, length=relax_steps)
        return [jax.lax.stop_gradient(h) for h in free]

    def init(key, params):
        return FeedbackState({})

    def step(params, state, x, labels):
        logits, hidden, branches = model.forward(params, x)
        value = cross_entropy(logits, labels)
        h_0, free = jax.lax.stop_gradient(hidden[0]), jax.lax.stop_gradient(hidden[1:])
        plus = relax(params, free, h_0, labels, beta)
        minus = relax(params, free, h_0, labels, -beta)

        def phase(p, states, b):  # h_0 is recomputed so the embedding sees its own gradient
            return total_energy(p, states, model.embed(p, x), labels, b)

        g_plus = jax.grad(phase)(params, plus, beta)
        g_minus = jax.grad(phase)(params, minus, -beta)
        grads = jax.tree.map(lambda a, b: (a - b) / (2 * beta), g_plus, g_minus)
        if penalty:
            extra = _local_block_grads(
                params, hidden, lambda l, bp_, h: penalty * _sq_norm(model.block(l, bp_, h))
            )
            grads["blocks"] = jax.tree.map(jnp.add, grads["blocks"], extra)
        return state, StepOutput(grads, value)

    return Rule("ep", init, step)


def _vector_states(model, params, name):
    hidden, _ = _state_shapes(model, params)
    if any(len(s) != 1 for s in hidden):
        raise ValueError(
            f"{name} (our reading) predicts from vector states [B, d]; this model's h_l are "
            f"{hidden}: use bp, dfa or ep on it"
        )
    return [s[0] for s in hidden]


def _bridge(model, name, make_predictor, predict, fit_target, block_objective, penalty, lr):
    """Shared frame of state_bridge and credit_bridge (see the module docstring)."""
    optimizer = optax.adam(lr)

    def init(key, params):
        sizes = _vector_states(model, params, name)
        keys = jax.random.split(key, len(sizes) - 1)
        predictors = [
            make_predictor(k, sizes[j], sizes[-1], _dtype(params)) for j, k in enumerate(keys)
        ]
        return BridgeState(predictors, optimizer.init(predictors), jnp.zeros((), _dtype(params)))

    def step(params, state, x, labels):
        logits, hidden, _ = model.forward(params, x)
        value = cross_entropy(logits, labels)
        target = jax.lax.stop_gradient(fit_target(logits, labels, hidden[-1]))
        predictors = jax.lax.stop_gradient(state.predictors)
        L = len(params["blocks"])

        def state_objective(j, h):  # the local objective on state h_j (j < L), predictor fixed
            return block_objective(model, params, predictors[j], h, labels)

        def block_loss(l, bp_, h_l):
            f = model.block(l, bp_, h_l)
            h_next = model.advance(h_l, f)
            if l == L - 1:
                objective = cross_entropy(model.readout(params, h_next), labels)
            else:
                objective = state_objective(l + 1, h_next)
            return objective + penalty * _sq_norm(f)

        grads = {
            "embed": _embed_grads(model, params, x, lambda h0: state_objective(0, h0)),
            "blocks": _local_block_grads(params, hidden, block_loss),
            "head": _head_grads(model, params, hidden[-1], labels),
        }

        def fit(ps):
            losses = [
                0.5
                * jnp.mean(
                    jnp.sum(
                        (predict(p, jax.lax.stop_gradient(h)) - target).reshape(h.shape[0], -1)
                        ** 2,
                        axis=-1,
                    )
                )
                for p, h in zip(ps, hidden[:-1], strict=True)
            ]
            return sum(losses) / len(losses)

        fit_value, fit_grads = jax.value_and_grad(fit)(state.predictors)
        updates, opt = optimizer.update(fit_grads, state.opt, state.predictors)
        new = BridgeState(optax.apply_updates(state.predictors, updates), opt, fit_value)
        return new, StepOutput(grads, value)

    return Rule(name, init, step)


def state_bridge(model, penalty: float = 0.0, lr: float = 1e-3) -> Rule:
    def make(key, d_j, d_L, dtype):
        A = jnp.eye(d_j, d_L, dtype=dtype)
        return {"A": A, "c": jnp.zeros((d_L,), dtype)}

    def predict(p, h):
        return h @ p["A"] + p["c"]

    def objective(model, params, p, h, labels):
        return cross_entropy(model.readout(params, predict(p, h)), labels)

    return _bridge(
        model,
        "state_bridge",
        make,
        predict,
        lambda logits, labels, h_L: h_L,
        objective,
        penalty,
        lr,
    )


def credit_bridge(model, penalty: float = 0.0, lr: float = 1e-3, width: int = 256) -> Rule:
    def make(key, d_j, d_L, dtype):
        k1, k2 = jax.random.split(key)
        return {
            "U": _normal(k1, (d_j, width), d_j, dtype),
            "a": jnp.zeros((width,), dtype),
            "v": _normal(k2, (width, 1), width, dtype),
            "c": jnp.zeros((1,), dtype),
        }

    def predict(p, h):
        return jax.nn.gelu(h @ p["U"] + p["a"]) @ p["v"] + p["c"]  # [B, 1]

    def per_sample_loss(logits, labels, h_L):
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, labels[:, None], axis=1)  # [B, 1]

    def objective(model, params, p, h, labels):
        return jnp.mean(predict(p, h))

    return _bridge(model, "credit_bridge", make, predict, per_sample_loss, objective, penalty, lr)


def frozen_blocks(rule: Rule) -> Rule:
    """Diagnostic (d)'s baseline: the same rule with the deep blocks frozen at their random init
    (zero block gradients); the embedding and the head train (the terminal LN has no
    parameters here)."""

    def step(params, state, x, labels):
        state, out = rule.step(params, state, x, labels)
        grads = {**out.grads, "blocks": jax.tree.map(jnp.zeros_like, out.grads["blocks"])}
        return state, out._replace(grads=grads)

    return Rule(f"{rule.name}, frozen blocks", rule.init, step)


def alignment(grads: dict, bp_grads: dict) -> dict:
    """Γ per layer: `metrics.cosine` of a method's gradient with BP's, for the embedding (when it
    has parameters), each block and the head (never aggregated here; `metrics.aggregate_cosine`
    names a strategy)."""
    from fa_audit import metrics

    out = {}
    if jax.tree.leaves(grads["embed"]):
        out["embed"] = metrics.cosine(grads["embed"], bp_grads["embed"])
    for l, (g, ref) in enumerate(zip(grads["blocks"], bp_grads["blocks"], strict=True)):
        out[f"block{l}"] = metrics.cosine(g, ref)
    out["head"] = metrics.cosine(grads["head"], bp_grads["head"])
    return out


RULES = {
    "bp": bp,
    "fa": fa,
    "dfa": dfa,
    "ep": ep,
    "state_bridge": state_bridge,
    "credit_bridge": credit_bridge,
}
AUXILIARY = {
    "fa": "feedback",
    "dfa": "feedback",
    "state_bridge": "predictors",
    "credit_bridge": "predictors",
}


def auxiliary(name: str, state) -> None:
    """Raises unless `state` carries the rule's auxiliary networks (random feedback or bridge
    predictors) with entries: a checkpoint without them must never fall back to measuring BP
    against itself (pitfall 7)."""
    field = AUXILIARY.get(name)
    if field is None:
        return
    present = getattr(state, field, None)
    if present is None or not jax.tree.leaves(present):
        raise ValueError(
            f"the {name} state has no {field}: the checkpoint did not persist the rule's "
            "auxiliary networks, so its alignment cannot be measured (re-train or restore them)"
        )


def get(name: str, model, **options) -> Rule:
    if name not in RULES:
        raise ValueError(f"unknown credit method {name!r}; known: {sorted(RULES)}")
    return RULES[name](model, **options)
