"""The online shift study both RTRL studies run: settings of (task, cell, n) × methods.

A preset (experiments/configs/rtrl_sparse.py, rtrl_immediate.py) is a list of settings, each a
task stream, a cell and its methods. A method is an algorithm of `rtrl.algorithms` with options,
trained online by an optimizer of `rtrl.optimizers` (the preset's, or the method's own
"optimizer"), optionally switched at the shift ("switch": {"to", "lr"}: a fresh second optimizer
from the stream's first shift on; lr 0 freezes the model), optionally over a learning-rate sweep
("lrs"). Every method of a setting sees the same streams and the same initial parameters per
seed; each (setting, method, lr) is one `experiments.runner` Run whose lanes are the seeds.

Per-step records (runs/<id>.npz): the online loss; against a passive shadow where the setting
asks for one (True: full RTRL; or {"algo", "options"}) the cosine and magnitude ratio over Θ;
with "group_norms" each parameter's gradient norm and the output-path / recurrent-path norms
(`Cell.output_params`); with "jacobian_stats" the one-step Jacobian J = ∂h_t/∂h_{t−1}'s mean
|J_ii| (the per-neuron self-propagation factor) and spectral radius (`rtrl.metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rtrl
from experiments import results, runner
from experiments.data import streams as streams_lib
from rtrl import forward, metrics, online, optimizers, tasks
from rtrl.cells import is_adapter, stacked

SHADOW = {"algo": "rtrl", "options": {}}  # the default reference: full RTRL


def task_spec(setting) -> tasks.TaskSpec:
    """The setting's stream: a synthetic `rtrl.tasks` task, or a file-backed one of
    `experiments.data.streams` (e.g. "text_shift")."""
    if setting["task"] in streams_lib.TASKS:
        return streams_lib.TASKS[setting["task"]](**setting["task_options"])
    return tasks.get(setting["task"], **setting["task_options"])


def seeds_of(config, setting) -> list[int]:
    return list(setting.get("seeds") or config.seeds)


def _resolve(options: dict, spec) -> dict:
    """Options with "shift" (a step) replaced by the stream's first shift."""
    return {k: (spec.shifts[0] if v == "shift" else v) for k, v in options.items()}


def build_algorithm(setting, method, spec):
    """The setting's cell and the method's algorithm; an option "shift" is the stream's first
    shift (so smoke presets, with shorter streams, keep the protocol)."""
    cell = rtrl.cells.get(setting["cell"], spec.n_in, setting["n_hidden"], spec.n_out)
    options = _resolve(method["options"], spec)
    return cell, rtrl.algorithms.get(method["algo"], cell, loss=spec.loss, **options)


def build_optimizer(config, method, spec, lr):
    """The method's optimizer at lr (the preset's unless the method names one), switched at the
    first shift to a fresh `switch["to"]` at `switch["lr"]` where the method asks for it, and
    restricted to the LoRA adapters where the method says "train": "adapters" (every other
    parameter gets a zero update)."""
    tx = optimizers.get(method.get("optimizer") or config.optimizer, lr)
    switch = method.get("switch")
    if switch:
        if not spec.shifts:
            raise ValueError(f"{method['label']}: a switch needs a stream with a shift")
        second = optimizers.get(switch["to"], switch["lr"])
        tx = optimizers.switch(tx, second, at=spec.shifts[0])
    train = method.get("train", "all")
    if train not in ("all", "adapters"):
        raise ValueError(f"{method['label']}: train must be 'all' or 'adapters', got {train!r}")
    if train == "adapters":
        tx = _only(tx, is_adapter)
    return tx


def _only(tx, trainable):
    """tx on the parameters whose name satisfies `trainable`, zero updates on the others."""

    def labels(params):
        return {k: "train" if trainable(k) else "freeze" for k in params}

    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)


def shadow_of(setting, method, cell, spec):
    """The passive reference algorithm of a method, or None."""
    shadow = setting.get("shadow")
    if not shadow:
        return None
    shadow = SHADOW if shadow is True else shadow
    if method["algo"] == shadow["algo"] and method["options"] == shadow.get("options", {}):
        return None  # never compared with itself
    options = _resolve(shadow.get("options", {}), spec)
    return rtrl.algorithms.get(shadow["algo"], cell, loss=spec.loss, **options)


def check_config(config) -> None:
    """Fail before any compute on a preset that names something unknown."""
    optimizers.get(config.optimizer, config.lr)
    if config.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {config.dtype!r}")
    for setting in config.settings:
        spec = task_spec(setting)
        for method in setting["methods"]:
            cell, _ = build_algorithm(setting, method, spec)
            build_optimizer(config, method, spec, config.lr)
            shadow_of(setting, method, cell, spec)
        labels = [m["label"] for m in setting["methods"]]
        for role in ("floor", "full"):
            if setting.get(role) and setting[role] not in labels:
                raise ValueError(f"{setting['name']}: {role} {setting[role]!r} not in {labels}")


def run_specs(config) -> list[dict]:
    """Every (setting, method, lr) to run, in order, with a stable id."""
    out = []
    for si, setting in enumerate(config.settings):
        for mi, method in enumerate(setting["methods"]):
            for li, lr in enumerate(method.get("lrs") or [method.get("lr") or config.lr]):
                out.append({"id": f"s{si}-m{mi}-l{li}", "setting": si, "method": mi, "lr": lr})
    return out


def streams(config, setting):
    """Per-seed keys [S, 3] (params, stream, algorithm) and the seeds' streams, vmapped."""
    spec = task_spec(setting)
    keys = runner.seed_keys(seeds_of(config, setting), 3)
    if setting["task"] in streams_lib.SEEDED:  # River's generators, seeded by the seed labels
        data = streams_lib.river_streams(
            setting["task"], seeds_of(config, setting), **setting["task_options"]
        )
    else:
        data = jax.jit(jax.vmap(spec.make))(keys[:, 1])
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    return spec, keys, jax.tree.map(lambda a: a.astype(dtype), data)


def _group_norms(cell, grad_norms: dict):
    """[P + 2]: ‖g_p‖ per parameter (sorted names), then ‖g_output‖ and ‖g_recurrent‖ (the
    parameters in / not in `cell.output_params`)."""
    names = sorted(grad_norms)
    norms = [grad_norms[p] for p in names]

    def combined(group):
        return jnp.sqrt(sum(grad_norms[p] ** 2 for p in group))

    output = [p for p in names if p in cell.output_params]
    recurrent = [p for p in names if p not in cell.output_params]
    return jnp.stack(norms + [combined(output), combined(recurrent)])


def _jacobian_stats(cell, params, carry_prev, x):
    """(mean_i |J_ii|, ρ(J)) of J = ∂h_t/∂h_{t−1} through the whole carry's transition."""
    h_of = cell.hidden

    def hidden_step(h_prev):
        flat = jax.tree.leaves(carry_prev)
        flat[cell.hidden_leaf] = h_prev
        carry = jax.tree.unflatten(jax.tree.structure(carry_prev), flat)
        return h_of(cell.transition(params, carry, x))

    J = jax.jacfwd(hidden_step)(h_of(carry_prev))
    return jnp.mean(jnp.abs(jnp.diagonal(J))), metrics.spectral_radius(J)


def pretrained_path(runner_: runner.Runner, si: int) -> Path:
    return runner_.workdir / "pretrained" / f"s{si}.npz"


def make_pretrain_run(config, si: int, runner_: runner.Runner, keys) -> runner.Run:
    """Batch pretraining of setting si's cell (its "pretrain": corpus "english", steps, batch,
    window, lr, Adam) on random windows of the corpus, one lane per seed from the same initial
    parameters the online runs would draw; LoRA adapters stay at init (B = 0). The final
    parameters are saved to `pretrained_path` (npz, no pickle) for the online runs' init."""
    setting = config.settings[si]
    pre = setting["pretrain"]
    spec = task_spec(setting)
    cell = rtrl.cells.get(setting["cell"], spec.n_in, setting["n_hidden"], spec.n_out)
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    tx = _only(optimizers.get("adam", pre["lr"]), lambda name: not is_adapter(name))
    corpus = streams_lib.CORPORA[pre["corpus"]]()
    seeds = seeds_of(config, setting)

    def init():
        def one(key):
            params = cell.init(key[0], dtype)
            return params, tx.init(params)

        return jax.jit(jax.vmap(one))(keys)

    def step(state, batch, args):
        params, opt_state = state
        onehot = jax.nn.one_hot(batch, spec.n_in, dtype=dtype)  # [B, W + 1, V]

        def loss(p):
            per_window = jax.vmap(lambda w: rtrl.sequence_loss(cell, p, w[:-1], w[1:], "xent"))
            return jnp.mean(per_window(onehot)) / pre["window"]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": value}

    def batches(first, n):
        out = np.empty((len(seeds), n, pre["batch"], pre["window"] + 1), np.int32)
        for i, seed in enumerate(seeds):
            for j in range(n):
                rng = np.random.default_rng([int(seed), first + j, 7])
                starts = rng.integers(0, corpus.size - pre["window"] - 1, pre["batch"])
                out[i, j] = corpus[starts[:, None] + np.arange(pre["window"] + 1)]
        return jnp.asarray(out)

    def finish(state, records, diverged):
        params = jax.tree.map(np.asarray, state[0])
        path = pretrained_path(runner_, si)
        if runner_.writer:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **params)
            tmp.replace(path)
        loss = np.asarray(records["loss"], np.float64)
        return {
            "first": np.mean(loss[:, :50], 1).tolist(),
            "last": np.mean(loss[:, -50:], 1).tolist(),
        }

    def rows(first, n, values, extra, seconds):
        loss = _clean(np.asarray(values["loss"]).mean(axis=1))
        return [
            {"setting": setting["name"], "method": "pretraining", "step": first + n, "loss": loss}
        ]

    return runner.Run(
        id=f"pretrain-s{si}",
        label=f"[{setting['name']}] pretraining on {pre['corpus']}",
        lanes=[{"seed": s} for s in seeds],
        init=init,
        step=step,
        batches=batches,
        steps=pre["steps"],
        chunk=min(config.chunk, pre["steps"]),
        finish=finish,
        per_lane_batches=True,
        rows=rows,
        cost=setting["n_hidden"] ** 2 * pre["batch"] * pre["window"],
    )


def load_pretrained(runner_: runner.Runner, si: int) -> dict:
    """The saved [S, ...] parameters of setting si's pretraining (np.load, allow_pickle=False)."""
    path = pretrained_path(runner_, si)
    if not path.exists():
        raise ValueError(f"{path} is missing: the pretraining run must finish first")
    with np.load(path, allow_pickle=False) as data:
        return {k: jnp.asarray(data[k]) for k in data.files}


def make_run(config, work: dict, runner_: runner.Runner, setting_streams, report) -> runner.Run:
    """setting_streams: `streams(config, setting)` of the work's setting, shared by its runs;
    report: the study's report module (run_summary, label)."""
    setting = config.settings[work["setting"]]
    method = setting["methods"][work["method"]]
    spec, keys, data = setting_streams
    cell, algo = build_algorithm(setting, method, spec)
    shadow = shadow_of(setting, method, cell, spec)
    learner = online.make_online(algo, build_optimizer(config, method, spec, work["lr"]), shadow)
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    probe_state = jax.eval_shape(lambda k: algo.init(k, cell.init(k, dtype)), keys[0, 2])
    spectrum = bool(setting.get("spectrum_every")) and isinstance(
        probe_state, forward.SensitivityState | forward.DiagonalState
    )  # the state holds M, whole [n, R, m] or its diagonal blocks [n, G, m]
    layer_spectra = bool(setting.get("layer_spectra")) and isinstance(
        probe_state, forward.JacobianState
    )  # full RTRL of a stacked cell: the condition of M's per-layer and cross-layer blocks
    seeds = seeds_of(config, setting)
    ys_all = rtrl.Target(data.ys, data.weights)
    group_norms, jacobian_stats = setting.get("group_norms"), setting.get("jacobian_stats")

    def init():
        if setting.get("pretrain"):  # every lane from its seed's pretrained parameters
            pretrained = load_pretrained(runner_, work["setting"])
            return jax.jit(jax.vmap(lambda k, p: learner.init(k[2], p)))(keys, pretrained)
        return jax.jit(jax.vmap(lambda k: learner.init(k[2], cell.init(k[0], dtype))))(keys)

    def step(state, batch, args):
        new, rec = learner.step(state, *batch)
        out = {"loss": rec.loss, "cosine": rec.cosine, "ratio": rec.magnitude_ratio}
        if shadow is not None:  # over Θ above; per group, the readout and the inflated cosine
            out.update(
                group_cosine=rec.group_cosine,  # [3] W_rec, W_in, b
                readout_norm=rec.readout_norm,  # [2] W_out, b_out
                shadow_readout_norm=rec.shadow_readout_norm,  # [2]
                readout_difference=rec.readout_difference,
                cosine_with_readout=rec.cosine_with_readout,
            )
        if group_norms:
            out["group_norm"] = _group_norms(cell, rec.grad_norms)
        if jacobian_stats:
            carry_prev = state.algo_state.carry
            out["self_factor"], out["spectral_radius"] = _jacobian_stats(
                cell, state.params, carry_prev, batch[0]
            )
        if setting["metric"] == "copy":  # scored from the predictions
            out["prediction"] = rec.prediction
        if setting["metric"] == "progressive":  # test-then-train accuracy, step by step
            out["correct"] = (jnp.argmax(rec.prediction) == jnp.argmax(batch[1].value)).astype(
                rec.loss.dtype
            )
        return new, out

    def layer_chunk_end(state):
        blocks = stacked.sensitivity_blocks(state.params, state.algo_state.M, cell.n_hidden)
        out = {}
        for i, M_block in enumerate(blocks.values()):
            out[f"block{i}_cond"] = metrics.jacobian_spectrum(M_block)[1]
            out[f"block{i}_row_cond"] = metrics.row_normalised_condition(M_block)
        return out

    def chunk_end(state):
        M_h = cell.hidden(state.algo_state.M)
        if isinstance(probe_state, forward.DiagonalState):
            # rows of disjoint support: orthogonal, so M's singular values are the row norms
            M_h = jnp.diag(jnp.linalg.norm(M_h.reshape(M_h.shape[0], -1), axis=1))
        rank, cond = metrics.jacobian_spectrum(M_h)
        row_cond = metrics.row_normalised_condition(M_h)
        return {"eff_rank": rank.astype(cond.dtype), "cond": cond, "row_cond": row_cond}

    def batches(first, n):
        window = slice(first, first + n)
        return data.xs[:, window], rtrl.Target(ys_all.value[:, window], ys_all.weight[:, window])

    def rows(first, n, values, extra, seconds):
        row = {"setting": setting["name"], "method": method["label"], "lr": work["lr"]}
        row.update(step=first + n, seeds=seeds, loss=_clean(values["loss"].mean(axis=1)))
        if np.isfinite(values["cosine"]).any():  # chunk means per seed, over Θ
            row["cosine"] = _clean(np.nanmean(values["cosine"], axis=1))
            row["magnitude_ratio"] = _clean(np.nanmean(values["ratio"], axis=1))
            if "group_cosine" in values:
                by_seed = np.nanmean(values["group_cosine"], axis=1)  # [S, 3]
                row["group_cosine"] = {
                    p: _clean(by_seed[:, i]) for i, p in enumerate(rtrl.cells.RECURRENT)
                }
                row["cosine_with_readout"] = _clean(
                    np.nanmean(values["cosine_with_readout"], axis=1)
                )
                row["readout_difference_max"] = _clean(
                    np.nanmax(values["readout_difference"], axis=1)
                )
        if "self_factor" in values:
            row["self_factor"] = _clean(np.nanmean(values["self_factor"], axis=1))
            row["spectral_radius"] = _clean(np.nanmean(values["spectral_radius"], axis=1))
        return [row]

    def finish(state, records, diverged):
        records = {**records, "seconds": runner_.busy_s.get(work["id"], 0.0)}
        score = getattr(state.algo_state, "score", None)
        if score is not None and score.shape[-1]:  # [S, n] Fisher of a dense phase
            records["fisher"] = np.asarray(score)
        if group_norms:
            names = sorted(jax.eval_shape(lambda: cell.init(jax.random.key(0), dtype)))
            records["group_names"] = names + ["output path", "recurrent path"]
        return report.run_summary(config, setting, work, records, data)

    return runner.Run(
        id=work["id"],
        label=report.label(config, work),
        lanes=[{"seed": s} for s in seeds],
        init=init,
        step=step,
        batches=batches,
        steps=spec.length,
        chunk=setting.get("spectrum_every") or config.chunk,
        finish=finish,
        per_lane_batches=True,
        chunk_end=chunk_end if spectrum else layer_chunk_end if layer_spectra else None,
        rows=rows,
        cost=setting["n_hidden"] ** 3,
    )


def _clean(arr) -> list:
    return [float(x) if np.isfinite(x) else None for x in np.asarray(arr, np.float64)]


def study(config, runner_: runner.Runner, report):
    """Every run of the preset through the runner, then the report's table and summary."""
    todo = run_specs(config)
    by_setting = {}  # every method of a setting reads the same streams: generate them once
    for work in todo:
        if work["setting"] not in by_setting:
            by_setting[work["setting"]] = streams(config, config.settings[work["setting"]])
    pretrain = [
        make_pretrain_run(config, si, runner_, by_setting[si][1])
        for si, setting in enumerate(config.settings)
        if setting.get("pretrain") and si in by_setting
    ]
    runs = [make_run(config, w, runner_, by_setting[w["setting"]], report) for w in todo]
    runner_.plan(pretrain + runs)
    for run in pretrain:
        runner_.run(run)
    done = {run.id: runner_.run(run) for run in runs}
    baselines = {}
    for si, setting in enumerate(config.settings):
        if setting.get("river_baselines"):
            baselines[si] = river_baselines(config, setting, runner_)
    return report.write(config, runner_, todo, done, baselines)


def river_baselines(config, setting, runner_: runner.Runner) -> dict:
    """River's models on the setting's streams, {model: [accuracy per seed]}, kept in the workdir
    (river_<setting>.json) after every (model, seed), so an interrupted run loses at most one
    stream (ARF takes ~20 CPU-minutes per 200K-sample stream). `river_seeds` ({model: n}) limits
    a model to the setting's first n seeds; the report names the seeds each row ran on."""
    path = runner_.workdir / f"river_{runner.slug(setting['name'])}.json"
    out = json.loads(path.read_text()) if path.exists() else {}
    seeds = seeds_of(config, setting)
    limits = setting.get("river_seeds") or {}
    for model in setting["river_baselines"]:
        todo = seeds[: limits.get(model, len(seeds))]
        accuracies = out.setdefault(model, [])
        for seed in todo[len(accuracies) :]:
            print(f"[{setting['name']}] River {model}, seed {seed} ...", flush=True)
            (accuracy,) = streams_lib.river_baselines(
                setting["task"], [seed], [model], **setting["task_options"]
            )[model]
            accuracies.append(accuracy)
            if runner_.writer:
                results.write_json(path, out)
    return out
