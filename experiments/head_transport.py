r"""Sparse gradient transport through attention heads (seeds/rtrl_sparse_paper.txt §4.7–4.8, Tables
10, 11, the transformer row of Table 14) on the shared runner.

    python -m experiments.head_transport --config=experiments/configs/head_transport.py:table10

Continual classification: the dataset's classes in pairs (0, 1), (2, 3), … as `tasks` sequential
tasks; every step trains on `batch` fresh samples of the current task plus `replay_batch` samples
drawn class-balanced from the replay buffer of the past tasks' classes (`rtrl.head_transport`'s
ReplayState, `replay_capacity` samples in all), one Adam update (`rtrl.optimizers`) of the
gradient of `rtrl.head_transport.head_transport` — k of H heads per block transport gradient,
resampled every forward pass or fixed from importance scores. Evaluation is class-incremental
(argmax over all classes), every head on, after every epoch, on `eval_per_task` test images of
each task.

All config runs (k × variant × selection × schedule) × seeds are the lanes of one `runner.Run`
(the condition is data, so one program is compiled per preset); one epoch of the current task per
chunk, so the accuracy after task i is the chunk that
ends it. At the first step of every task i ≥ 2 (`first` of the batch, shared by the lanes, so the
`lax.cond` stays a branch under vmap) the per-head Fisher and attention-entropy scores of the
parameters after task i − 1 are computed on that task's samples in the replay buffer
(`fisher_batches` class-balanced minibatches); a score selection fixes its heads from the scores
after task `score_after`. Tasks before `dense_tasks` train with every head.

The report (experiments/reports/head_transport.py) writes table.md, summary.json and the PNGs.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli, runner
from experiments.data import images
from experiments.reports import head_transport as report
from rtrl import head_transport as ht
from rtrl import optimizers


class Data:
    """The split task stream: per task its training indices and its evaluation images (uint8,
    normalised inside the step so a chunk's batches stay small)."""

    def __init__(self, config):
        root = config.data_root or os.environ.get("CIFAR10") or None
        data = images.load(config.dataset, root=root if config.dataset != "fashion_mnist" else None)
        stand_in = " — our stand-in for the paper's CIFAR-10" if data.name != "cifar10" else ""
        self.source = f"Split {data.name} ({data.source}){stand_in}"
        self.classes = data.classes
        self.train_x, self.train_y = data.train.images, data.train.labels
        pixels = self.train_x.reshape(-1, self.train_x.shape[-1]).astype(np.float64) / 255.0
        self.mean = pixels.mean(axis=0).astype(np.float32)
        self.std = pixels.std(axis=0).astype(np.float32)
        per_task = config.classes_per_task
        if config.tasks * per_task > self.classes:
            raise ValueError(
                f"{config.tasks} tasks of {per_task} classes need {config.tasks * per_task} "
                f"classes; {data.name} has {self.classes}: lower tasks"
            )
        self.task_classes = [
            list(range(t * per_task, (t + 1) * per_task)) for t in range(config.tasks)
        ]
        self.task_index, eval_x, eval_y = [], [], []
        for classes in self.task_classes:
            rows = []
            for c in classes:
                of_c = np.flatnonzero(self.train_y == c)
                rows.append(of_c[: config.train_per_class] if config.train_per_class else of_c)
            self.task_index.append(np.concatenate(rows))
            test = np.flatnonzero(np.isin(data.test.labels, classes))
            n_eval = config.eval_per_task or len(test)
            if n_eval > len(test):
                raise ValueError(f"eval_per_task {n_eval} exceeds the {len(test)} test images")
            eval_x.append(data.test.images[test[:n_eval]])
            eval_y.append(data.test.labels[test[:n_eval]])
        self.eval_x, self.eval_y = np.stack(eval_x), np.stack(eval_y)  # [T, n, ...], [T, n]
        n_task = min(len(i) for i in self.task_index)
        self.task_index = [i[:n_task] for i in self.task_index]
        if n_task < config.batch:
            raise ValueError(f"{n_task} samples per task are fewer than one batch {config.batch}")
        self.steps_per_epoch = n_task // config.batch
        self.image_shape = self.train_x.shape[1:]

    def normalise(self, x):
        return (jnp.asarray(x, jnp.float32) / 255.0 - self.mean) / self.std


def build_model(config, data: Data) -> ht.ViT:
    m = config.model
    return ht.ViT(
        image=tuple(data.image_shape),
        patch=m.patch,
        embed=m.heads * m.head_dim,
        heads=m.heads,
        depth=m.depth,
        mlp=m.mlp,
        classes=data.classes,
    )


class HeadStudy:
    def __init__(self, config):
        self.config = config
        self.data = Data(config)
        self.model = build_model(config, self.data)

    @property
    def steps_per_task(self) -> int:
        return self.config.epochs_per_task * self.data.steps_per_epoch

    def batches(self, first: int, n: int) -> dict:
        """Steps [first, first + n): the current task's samples in epoch order, its index, whether
        the step opens a task, and the step index (a function of the step alone)."""
        c, d = self.config, self.data
        spt, spe = self.steps_per_task, d.steps_per_epoch
        index, task, opens = [], [], []
        for t in range(first, first + n):
            i, within = divmod(t, spt)
            epoch, j = divmod(within, spe)
            perm = np.random.default_rng([c.data_seed, i, epoch]).permutation(len(d.task_index[i]))
            index.append(d.task_index[i][perm[j * c.batch : (j + 1) * c.batch]])
            task.append(i)
            opens.append(within == 0)
        index = np.stack(index)
        return {
            "x": d.train_x[index],
            "y": d.train_y[index],
            "task": np.asarray(task, np.int32),
            "first": np.asarray(opens),
            "t": np.arange(first, first + n, dtype=np.int32),
        }

    def make_run(self) -> runner.Run:
        """Every config run × seed as a lane of one program: the condition is data
        (`rtrl.head_transport.TransportSpec` in the rule state, dense_tasks and score_after in
        the lane args), so one compilation serves them all; lanes of one seed share its
        initialisation and keys (paired comparisons)."""
        c, d, model = self.config, self.data, self.model
        rule = ht.head_transport(model)
        tx = optimizers.get(c.optimizer, c.lr)
        S = len(c.seeds)
        lanes = [{"condition": spec["id"], "seed": s} for spec in c.runs for s in c.seeds]
        keys = jnp.tile(runner.seed_keys(c.seeds, 3), (len(c.runs), 1))
        specs = [
            ht.transport_spec(model.heads, spec["k"], spec["variant"], spec["selection"])
            for spec in c.runs
            for _ in c.seeds
        ]
        specs = jax.tree.map(lambda *x: jnp.stack(x), *specs)
        args = {
            name: jnp.asarray([spec[name] for spec in c.runs for _ in c.seeds], jnp.int32)
            for name in ("dense_tasks", "score_after")
        }
        per_task, T = c.classes_per_task, c.tasks
        class_task = jnp.arange(d.classes) // per_task  # tasks ≥ T own no class
        per_class = c.replay_capacity // per_task  # a task's classes fill the buffer at most
        half = c.fisher_batches * c.batch // per_task
        shape = (model.depth, model.heads)
        eval_x, eval_y = jnp.asarray(d.eval_x), jnp.asarray(d.eval_y)
        task_of = jnp.asarray(d.eval_y) // per_task

        def init():
            def one(key, spec):
                params = model.init(key[0])
                return {
                    "params": params,
                    "opt": tx.init(params),
                    "rule": rule.init(key[1], params, spec),
                    "replay": ht.replay_init(d.classes, per_class, d.image_shape),
                    "scores": {name: jnp.zeros((T - 1, *shape), jnp.float32) for name in ht.SCORES},
                    "key": key[2],
                }

            return jax.jit(jax.vmap(one))(keys, specs)

        def score(state, task, score_after):
            """The scores after task `task` − 1 on its samples in the buffer."""
            done = task - 1
            classes = done * per_task + jnp.arange(per_task)
            rows = state["replay"].images[classes, :half]  # [per_task, half, ...]
            rows = rows.reshape(
                per_task, c.fisher_batches, half // c.fisher_batches, *d.image_shape
            )
            xs = jnp.swapaxes(rows, 0, 1).reshape(c.fisher_batches, -1, *d.image_shape)
            ys = jnp.broadcast_to(
                jnp.repeat(classes, half // c.fisher_batches)[None], xs.shape[:2]
            ).astype(jnp.int32)
            scores = ht.head_scores(model, state["params"], d.normalise(xs), ys)
            history = {k: v.at[done].set(scores[k]) for k, v in state["scores"].items()}
            chosen = rule.select(state["rule"], scores)
            fixed = jnp.where(task == score_after, chosen.fixed, state["rule"].fixed)
            return {**state, "scores": history, "rule": state["rule"]._replace(fixed=fixed)}

        def step(state, batch, args):
            task = batch["task"]
            state = jax.lax.cond(
                batch["first"] & (task >= 1),
                lambda s: score(s, task, args["score_after"]),
                lambda s: s,
                state,
            )
            params = state["params"]
            past = class_task < task
            xr, yr, valid = ht.replay_sample(
                state["replay"],
                jax.random.fold_in(state["key"], batch["t"]),
                c.replay_batch,
                past,
                c.replay_capacity,
            )
            x = jnp.concatenate([batch["x"], xr])
            y = jnp.concatenate([batch["y"], yr])
            weights = jnp.concatenate([jnp.ones(batch["y"].shape, bool), valid])
            dense = task < args["dense_tasks"]
            rule_state, out = rule.step(params, state["rule"], d.normalise(x), y, weights, dense)
            updates, opt = tx.update(out.grads, state["opt"], params)
            qkv = [{n: b[n] for n in ("q", "k", "v")} for b in out.grads["blocks"]]
            metrics = {
                "loss": out.loss,
                "grad_norm": optax.tree.norm(out.grads),
                "qkv_grad_norm": optax.tree.norm(qkv),
                "heads": jnp.mean(jnp.sum(out.gates, axis=1).astype(jnp.float32)),
            }
            new = {
                **state,
                "params": optax.apply_updates(params, updates),
                "opt": opt,
                "rule": rule_state,
                "replay": ht.replay_add(state["replay"], batch["x"], batch["y"]),
            }
            return new, metrics

        def chunk_end(state):
            """Accuracy on every task's evaluation images, every head on: class-incremental
            (argmax over all classes) and task-incremental (over the task's own classes)."""
            logits = jax.lax.map(lambda x: model.apply(state["params"], d.normalise(x)), eval_x)
            own = class_task[None, None, :] == task_of[:, :, None]  # [T, n, classes]
            cil = jnp.mean(jnp.argmax(logits, -1) == eval_y, axis=1)
            til = jnp.mean(jnp.argmax(jnp.where(own, logits, -jnp.inf), -1) == eval_y, axis=1)
            return {"acc": cil, "acc_task_il": til}

        def finish(state, records, diverged):
            out = {}
            for i, spec in enumerate(c.runs):
                part = slice(i * S, (i + 1) * S)
                out[spec["id"]] = report.run_summary(
                    c,
                    spec,
                    jax.tree.map(lambda x, part=part: x[part], state),
                    {k: v[part] for k, v in records.items()},
                    diverged[part],
                    d.source,
                    d.steps_per_epoch,
                )
            return {"runs": out}

        return runner.Run(
            id="conditions",
            label=f"{len(c.runs)} conditions × {S} seeds",
            lanes=lanes,
            init=init,
            step=step,
            batches=self.batches,
            steps=T * self.steps_per_task,
            chunk=d.steps_per_epoch,
            finish=finish,
            args=args,
            chunk_end=chunk_end,
            watch=("loss",),
            group=c.group,
        )


def study(config, runner_: runner.Runner):
    s = HeadStudy(config)
    print(f"data: {s.data.source}; {s.steps_per_task} steps per task", flush=True)
    run_ = s.make_run()
    runner_.plan([run_])
    done = runner_.run(run_)["runs"]
    return report.write(config, runner_.workdir, done), {"data": s.data.source, "runs": done}


def check(config) -> None:
    """Refuses a config that cannot run, naming the field to change."""
    m = config.model
    if m.heads < 1:
        raise ValueError(f"model.heads = {m.heads}; needs at least one head")
    ids = [spec["id"] for spec in config.runs]
    if len(ids) != len(set(ids)):
        raise ValueError(f"run ids repeat: {sorted(i for i in ids if ids.count(i) > 1)}")
    for spec in config.runs:
        where = f"run {spec['id']}"
        if not isinstance(spec["k"], int) or not 0 <= spec["k"] <= m.heads:
            raise ValueError(f"{where}: k = {spec['k']} must be in [0, model.heads = {m.heads}]")
        if spec["variant"] not in ht.VARIANTS:
            raise ValueError(
                f"{where}: unknown variant {spec['variant']!r}; use {sorted(ht.VARIANTS)}"
            )
        if spec["selection"] not in ht.SELECTIONS:
            raise ValueError(
                f"{where}: unknown selection {spec['selection']!r}; use {sorted(ht.SELECTIONS)}"
            )
        if not 0 <= spec["dense_tasks"] < config.tasks:
            raise ValueError(f"{where}: dense_tasks must be in [0, tasks = {config.tasks})")
        if ht.SELECTIONS[spec["selection"]].score is not None and not (
            1 <= spec["score_after"] <= spec["dense_tasks"]
        ):
            raise ValueError(
                f"{where}: a score selection needs 1 <= score_after <= dense_tasks (the scores "
                f"after task score_after fix the heads of the tasks after dense_tasks); got "
                f"score_after {spec['score_after']}, dense_tasks {spec['dense_tasks']}"
            )
    if config.tasks < 2:
        raise ValueError("tasks must be at least 2 (scores are taken between tasks)")
    per_task = config.classes_per_task
    if config.replay_capacity < per_task:
        raise ValueError(f"replay_capacity {config.replay_capacity} < classes_per_task")
    if (config.fisher_batches * config.batch) % per_task:
        raise ValueError("fisher_batches × batch must split evenly over a task's classes")
    half = config.fisher_batches * config.batch // per_task
    limit = config.replay_capacity // per_task
    if config.train_per_class:
        limit = min(limit, config.train_per_class)
    if half > limit:
        raise ValueError(
            f"the scores need {half} buffer samples per class (fisher_batches × batch / "
            f"classes_per_task) but a class keeps at most {limit}: lower fisher_batches"
        )
    unknown = set(config.tables) - set(report.BUILDERS)
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}; known: {sorted(report.BUILDERS)}")


def run(config, workdir: str | Path) -> dict:
    return runner.run_study(config, workdir, study, check=check)


if __name__ == "__main__":
    cli.run_study("head_transport", run, "Head-transport config (…/head_transport.py:<preset>).")
