r"""The ff study (seeds/ff_dtg_paper.md, issue 14) on the shared runner.

    python -m experiments.ff --config=experiments/configs/ff.py:synthetic [--workdir=...]

`config.experiment` picks the experiment; each is a function (config, runner) -> (table,
summary) in EXPERIMENTS (more experiments, e.g. Fashion-MNIST or the systems audit, are more
entries).

synthetic (§3.2, App. E): one `runner.Run` per K × method, its lanes the seeds (the students'
shapes depend on K, so K cannot be a lane). Lane s trains its method's student on seed s's task
(`ff.synthetic.make_task`'s recipe, a fresh teacher per seed; every method of a seed sees the same
task and the same batches, so differences are paired): Adam on the rule's gradients, one step per
batch of 256 drawn from the epoch's permutation. The task's training split travels as the run's
per-lane `args`; its teacher and input key ride in the lane's state (never updated), so at the
end of every chunk the lane regenerates its splits (a pure function) and measures train and test
accuracy on the full splits (DTG-FF: logit-sum and every layer's own ψ_l). Lanes run one at a
time (`group`, lax.map: faster than vmap on CPU, measured). The report (experiments/reports/ff.py)
computes the paired differences, the bootstrap contrast and the train–test gaps, and writes
table.md and the PNGs.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli, runner
from experiments.configs import ff as presets
from experiments.reports import ff as report
from ff import backbones, rules, synthetic

COST = {"dtg_ff": 1.2, "bp": 1.0, "bp_deepsup": 1.1, "bp_ensemble": 3.7}  # measured, K = 10


def synthetic_model(config, method: str, classes: int):
    size = dict(d_in=config.d_in, width=config.width, depth=config.depth)
    if method == "bp_ensemble":
        return synthetic.ensemble_student(classes, config.ensemble_members, **size)
    return synthetic.STUDENTS[method](classes, **size)


def parameter_counts(config, classes: int) -> dict:
    """{method: learnable parameters} at K = classes, plus DTG-FF's fixed readout buffers."""
    out = {}
    for method in config.methods:
        model = synthetic_model(config, method, classes)
        out[method] = backbones.count(jax.eval_shape(model.init, jax.random.key(0)))
    if "dtg_ff" in config.methods:
        model = synthetic_model(config, "dtg_ff", classes)
        readout = jax.eval_shape(model.init_readout, jax.random.key(0))
        out["dtg_ff_buffers"] = backbones.count(readout)
    return out


class SyntheticStudy:
    def __init__(self, config):
        self.config = config
        self.keys = runner.seed_keys(config.seeds, 3)  # [seeds, 3]: task, init, rule

    @functools.lru_cache(maxsize=8)  # noqa: B019 (one study per process)
    def tasks(self, classes: int) -> dict:
        """Every seed's task at K, shared by the K's methods: {"teacher", "x_key" (its input
        key), "x" [lanes, n_train, d_in], "y" [lanes, n_train]} (the training split)."""
        c = self.config

        def one(key):
            kt, kx = jax.random.split(key)
            teacher = synthetic.init_teacher(kt, classes, c.d_in, c.teacher_hidden, jnp.float32)
            x, y = synthetic.sample(teacher, kx, c.n_train, c.d_in, jnp.float32)
            return {"teacher": teacher, "x_key": kx, "x": x, "y": y}

        return jax.jit(jax.vmap(one))(self.keys[:, 0])

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (the study lives for the process)
    def _perm(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.config.n_train)

    def batch_indices(self, first: int, n: int) -> np.ndarray:
        """[lanes, n, batch] int32: step t's batch is slot t % spe of epoch t // spe's permutation
        of seed s's training split (the remainder of each epoch dropped)."""
        c = self.config
        spe = c.n_train // c.batch
        out = np.empty((len(c.seeds), n, c.batch), np.int32)
        for i, seed in enumerate(c.seeds):
            for j, t in enumerate(range(first, first + n)):
                epoch, slot = divmod(t, spe)
                out[i, j] = self._perm(seed, epoch)[slot * c.batch : (slot + 1) * c.batch]
        return out

    def make_run(self, method: str, classes: int) -> runner.Run:
        c = self.config
        model = synthetic_model(c, method, classes)
        rule = rules.get(method, model)
        tx = optax.adam(c.lr)
        keys, task = self.keys, self.tasks(classes)
        lanes = [{"seed": s, "K": classes, "method": method} for s in c.seeds]

        def predict(params, rule_state, x):
            if method == "dtg_ff":
                return model.logits(params, rule_state.readout, x)
            return model.logits(params, x)

        def accuracy(fn, x, y):
            """mean over the split of fn(x_chunk, y_chunk) -> per-sample values, in eval_batch
            chunks (lax.map, so a split is never one big activation)."""
            n = x.shape[0] // c.eval_batch
            xs = x.reshape(n, c.eval_batch, *x.shape[1:])
            ys = y.reshape(n, c.eval_batch)
            return jnp.mean(jax.lax.map(lambda a: fn(*a), (xs, ys)), axis=(0, -1))

        def init():
            def one(key):
                params = model.init(key[1], jnp.float32)
                return {
                    "params": params,
                    "rule": rule.init(key[2], params),
                    "opt": tx.init(params),
                }

            # eagerly, lane by lane: jax.random's programs are cached by shape, so the methods'
            # shared backbone shapes compile once per study (a jitted vmap compiles per run)
            lanes_ = [one(key) for key in keys]
            states = jax.tree.map(lambda *xs: jnp.stack(xs), *lanes_)
            return {**states, "teacher": task["teacher"], "x_key": task["x_key"]}

        def step(state, index, data):
            params = state["params"]
            rule_state, out = rule.step(params, state["rule"], data["x"][index], data["y"][index])
            updates, opt = tx.update(out.grads, state["opt"], params)
            new = optax.apply_updates(params, updates)
            return {**state, "params": new, "rule": rule_state, "opt": opt}, {"loss": out.loss}

        def chunk_end(state):
            # the lane's task regenerated from its teacher and input key: make_task's split
            x, y = synthetic.sample(state["teacher"], state["x_key"], c.n_train + c.n_test, c.d_in)
            x_train, x_test = x[: c.n_train], x[c.n_train :]
            y_train, y_test = y[: c.n_train], y[c.n_train :]
            params, rule_state = state["params"], state["rule"]

            def correct(x, y):
                return (jnp.argmax(predict(params, rule_state, x), -1) == y).astype(jnp.float32)

            out = {
                "train_acc": accuracy(correct, x_train, y_train),
                "test_acc": accuracy(correct, x_test, y_test),
            }
            if method == "dtg_ff":

                def per_layer(x, y):
                    psi = model.evaluate(params, rule_state.readout, x)[0]  # [L, B, K]
                    return (jnp.argmax(psi, -1) == y).astype(jnp.float32)  # [L, B]

                out["layer_test_acc"] = accuracy(per_layer, x_test, y_test)
            return out

        def finish(state, records, diverged):
            curve = {k[len("chunk/") :]: v for k, v in records.items() if k.startswith("chunk/")}
            result = {
                "method": method,
                "K": classes,
                "seeds": list(c.seeds),
                "test_accuracy": _json(curve["test_acc"][:, -1]),
                "train_accuracy": _json(curve["train_acc"][:, -1]),
                "curve_steps": [min((i + 1) * c.chunk, c.steps) for i in range(_chunks(c))],
                "curve": {k: _json(v) for k, v in curve.items()},
                "final_loss": _json(records["loss"][:, -1]),
                "diverged": np.asarray(diverged).tolist(),
            }
            accs = ", ".join(f"{a:.4f}" for a in result["test_accuracy"])
            print(f"[{method} K={classes}] test accuracy per seed: {accs}", flush=True)
            return result

        return runner.Run(
            id=f"K{classes}/{method}",
            label=f"K={classes} {presets.METHOD_LABELS[method]}",
            lanes=lanes,
            init=init,
            step=step,
            batches=self.batch_indices,
            per_lane_batches=True,
            args={"x": task["x"], "y": task["y"]},
            steps=c.steps,
            chunk=c.chunk,
            finish=finish,
            chunk_end=chunk_end,
            watch=("loss",),
            rate_key=method,
            cost=COST[method],
            group=c.group,
        )


def _chunks(config) -> int:
    return -(-config.steps // config.chunk)


def _json(value):
    """Arrays as nested lists with None where not finite (JSON has no NaN)."""
    arr = np.asarray(value, np.float64)
    if arr.ndim == 0:
        return float(arr) if np.isfinite(arr) else None
    return [_json(v) for v in arr]


def run_synthetic(config, runner_: runner.Runner):
    s = SyntheticStudy(config)
    runs = [s.make_run(m, k) for k in config.classes for m in config.methods]
    counts = {str(k): parameter_counts(config, k) for k in config.classes}
    runner_.plan(runs)
    done = {run.id: runner_.run(run) for run in runs}
    table, stats = report.write(config, runner_.workdir, done, counts)
    summary = {"experiment": "synthetic", "parameter_counts": counts, **stats, "runs": done}
    return table, summary


EXPERIMENTS = {"synthetic": run_synthetic}


def study(config, runner_: runner.Runner):
    return EXPERIMENTS[config.experiment](config, runner_)


def check(config) -> None:
    if config.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {config.experiment!r}; known: {sorted(EXPERIMENTS)}")
    unknown = set(config.methods) - set(presets.SYNTHETIC_METHODS)
    if unknown:
        raise ValueError(
            f"unknown methods {sorted(unknown)}; known: {list(presets.SYNTHETIC_METHODS)}"
        )
    for name, n in (("n_train", config.n_train), ("n_test", config.n_test)):
        if n % config.eval_batch:
            raise ValueError(f"{name} = {n} must be a multiple of eval_batch = {config.eval_batch}")
    if config.n_train < config.batch:
        raise ValueError(f"n_train = {config.n_train} is smaller than one batch of {config.batch}")
    if config.steps % config.chunk:
        raise ValueError(f"steps = {config.steps} must be a multiple of chunk = {config.chunk}")
    if min(config.classes) < 2 or max(config.classes) > config.d_in:
        raise ValueError(f"classes {config.classes} must lie in [2, d_in = {config.d_in}]")
    split = set(config.low_k) | set(config.high_k)
    if not split <= set(config.classes) or set(config.low_k) & set(config.high_k):
        raise ValueError(
            f"low_k {config.low_k} and high_k {config.high_k} must be disjoint subsets of "
            f"classes {config.classes}"
        )


def run(config, workdir: str | Path) -> dict:
    return runner.run_study(config, workdir, study, check=check)


if __name__ == "__main__":
    cli.run_study("ff", run, "ff study config.")
