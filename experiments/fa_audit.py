r"""The feedback-alignment audit (seeds/fa_audit_paper.tex) on the shared runner.

    python -m experiments.fa_audit --config=experiments/configs/fa_audit.py:audit [--workdir=...]

Every config run (architecture × credit method × options, or the frozen-blocks baseline) is one
`runner.Run` whose lanes are the seeds: AdamW on the rule's gradients, one epoch per chunk, the
protocol's measurements (`fa_audit.audit.measure`) on the fixed evaluation batch after every
epoch, then the full test accuracy and DFA's null calibration at the end. The report
(experiments/reports/fa_audit.py) writes table.md, summary.json and the PNGs.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import cli, runner
from experiments.data import images
from experiments.reports import fa_audit as report
from fa_audit import audit, models, rules, tasks

IMAGE_ARCHS = ("residual_mlp", "vit_mini", "small_cnn")


class Data:
    """One architecture's train / test arrays: images as uint8 (normalised inside the step, so a
    chunk's batches stay small), the teacher task as float32."""

    def __init__(self, config, kind: str):
        if kind in IMAGE_ARCHS:
            root = config.data_root or os.environ.get("CIFAR10") or None
            data = images.load(
                config.dataset, root=root if config.dataset != "fashion_mnist" else None
            )
            self.source = f"{data.name} ({data.source})"
            self.classes = data.classes
            self.train_x, self.train_y = data.train.images, data.train.labels
            self.test_x, self.test_y = data.test.images, data.test.labels
            pixels = self.train_x.reshape(-1, self.train_x.shape[-1]).astype(np.float64) / 255.0
            self.mean = pixels.mean(axis=0).astype(np.float32)
            self.std = pixels.std(axis=0).astype(np.float32)
        else:
            t = config.teacher
            (self.train_x, self.train_y), (self.test_x, self.test_y) = tasks.teacher(
                jax.random.key(config.data_seed),
                train=t.train,
                test=t.test,
                d_in=config.archs["student"].d_in,
                width=config.archs["student"].width,
            )
            self.source = "synthetic teacher (fa_audit.tasks.teacher)"
            self.classes, self.mean, self.std = 10, None, None
        if config.train_subset:
            self.train_x = self.train_x[: config.train_subset]
            self.train_y = self.train_y[: config.train_subset]

    def normalise(self, x):
        if self.mean is None:
            return jnp.asarray(x, jnp.float32)
        return (jnp.asarray(x, jnp.float32) / 255.0 - self.mean) / self.std

    @property
    def input_shape(self):
        return self.train_x.shape[1:]


def build_model(arch: dict, data: Data):
    kind, shape = arch["kind"], data.input_shape
    if kind == "residual_mlp":
        return models.ResidualMLP(
            d_in=int(np.prod(shape)), d=arch["d"], blocks=arch["blocks"], classes=data.classes
        )
    if kind == "student_net":
        return models.student_net(
            shape[0], d=arch["d"], blocks=arch["blocks"], classes=data.classes
        )
    if kind == "vit_mini":
        return models.ViTMini(
            image=tuple(shape),
            patch=arch["patch"],
            d=arch["d"],
            heads=arch["heads"],
            mlp=arch["mlp"],
            blocks=arch["blocks"],
            classes=data.classes,
        )
    if kind == "small_cnn":
        return models.SmallCNN(
            image=tuple(shape),
            channels=tuple(arch["channels"]),
            pool=tuple(arch["pool"]),
            classes=data.classes,
        )
    raise ValueError(f"unknown architecture kind {kind!r}")


class AuditStudy:
    def __init__(self, config, runner_: runner.Runner):
        self.config, self.runner = config, runner_
        self._data: dict[str, Data] = {}

    def data(self, arch: str) -> Data:
        kind = self.config.archs[arch]["kind"]
        source = "images" if kind in IMAGE_ARCHS else "teacher"
        if source not in self._data:
            self._data[source] = Data(self.config, kind)
        return self._data[source]

    def steps_per_epoch(self, arch: str) -> int:
        n = len(self.data(arch).train_y)
        if n < self.config.batch:
            raise ValueError(
                f"{n} training samples are fewer than one batch of {self.config.batch}"
            )
        return n // self.config.batch

    def make_run(self, spec: dict) -> runner.Run:
        c = self.config
        data = self.data(spec["arch"])
        model = build_model(c.archs[spec["arch"]], data)
        rule = rules.get(spec["method"], model, **spec["options"])
        if spec["frozen"]:
            rule = rules.frozen_blocks(rule)
        spe = self.steps_per_epoch(spec["arch"])
        steps = spe * c.epochs
        tx = optax.adamw(optax.cosine_decay_schedule(c.lr, steps), weight_decay=c.weight_decay)
        lanes = [{"seed": s} for s in c.seeds]
        keys = runner.seed_keys(c.seeds, 3)
        x_eval = data.normalise(data.test_x[: c.eval_size])
        y_eval = jnp.asarray(data.test_y[: c.eval_size])

        def init():
            def one(key):
                params = model.init(key[0])
                return {
                    "params": params,
                    "rule": rule.init(key[1], params),
                    "opt": tx.init(params),
                    "key": key[2],
                }

            return jax.jit(jax.vmap(one))(keys)

        def step(state, batch, args):
            x, y = batch
            params = state["params"]
            rule_state, out = rule.step(params, state["rule"], data.normalise(x), y)
            updates, opt = tx.update(out.grads, state["opt"], params)
            new = optax.apply_updates(params, updates)
            if spec["frozen"]:  # AdamW's decay must not move the frozen blocks either
                new = {**new, "blocks": params["blocks"]}
            metrics = {"loss": out.loss, "grad_norm": optax.tree.norm(out.grads)}
            return {**state, "params": new, "rule": rule_state, "opt": opt}, metrics

        def chunk_end(state):
            return audit.measure(
                model,
                spec["method"],
                rule,
                state["params"],
                state["rule"],
                x_eval,
                y_eval,
                state["key"],
                sub_batches=c.sub_batches,
                directions=c.rho_directions,
                eps=c.rho_eps,
            )

        def batches(first, n):
            index = np.concatenate([self._order(spec["arch"], t) for t in range(first, first + n)])
            x = data.train_x[index].reshape(n, c.batch, *data.input_shape)
            return x, data.train_y[index].reshape(n, c.batch)

        def rows(first, n, metrics, extra, seconds):
            digest = zlib.crc32(np.asarray(batches(first, 1)[1]).tobytes())
            out = []
            for i, lane in enumerate(lanes):
                row = {"run": spec["id"], **lane, "epoch": (first + n) // spe, "step": first + n}
                row["train_loss"] = float(np.mean(metrics["loss"][i], dtype=np.float64))
                for name, value in extra.items():
                    row[name] = _json(value[i])
                row["batch0_crc32"] = digest
                row["steps_per_s"] = n / seconds
                out.append(row)
            return out

        def finish(state, records, diverged):
            return self.finish(spec, model, data, (x_eval, y_eval), state, records, diverged)

        return runner.Run(
            id=spec["id"],
            label=f"{spec['arch']} {spec['label']}",
            lanes=lanes,
            init=init,
            step=step,
            batches=batches,
            steps=steps,
            chunk=spe,
            finish=finish,
            chunk_end=chunk_end,
            rows=rows,
            watch=("loss",),
            rate_key=f"{spec['arch']}/{spec['method']}",
            cost=_cost(spec),
        )

    def _order(self, arch: str, t: int) -> np.ndarray:
        """The indices of step t's batch: epoch t // spe's permutation of the training split."""
        spe, b = self.steps_per_epoch(arch), self.config.batch
        epoch, i = divmod(t, spe)
        perm = np.random.default_rng([self.config.data_seed, epoch]).permutation(
            len(self.data(arch).train_y)
        )
        return perm[i * b : (i + 1) * b]

    def finish(self, spec, model, data, evaluation, state, records, diverged) -> dict:
        c = self.config
        x_test = data.normalise(data.test_x)
        y_test = jnp.asarray(data.test_y)
        batch = min(1000, len(data.test_y))
        n = len(data.test_y) - len(data.test_y) % batch
        test = jax.jit(jax.vmap(lambda p: audit.evaluate(model, p, x_test[:n], y_test[:n], batch)))
        out = {
            "test_accuracy": np.asarray(test(state["params"])).tolist(),
            "diverged": np.asarray(diverged).tolist(),
            "data": data.source,
            "epochs": {
                k[len("chunk/") :]: _json(v) for k, v in records.items() if k.startswith("chunk/")
            },
        }
        if spec["method"] == "dfa" and not spec["frozen"]:
            x_eval, y_eval = evaluation
            penalty = spec["options"].get("penalty", 0.0)
            null = jax.jit(
                jax.vmap(
                    lambda p, k: audit.null_calibration(
                        model, p, x_eval, y_eval, k, draws=c.null_draws, penalty=penalty
                    )
                )
            )
            cos, gamma = null(
                state["params"], jax.random.split(jax.random.key(c.data_seed + 1), len(c.seeds))
            )
            out["null_deep_cos"] = _json(cos)
            out["null_gamma_flat"] = _json(gamma)
        accs = ", ".join(f"{a:.3f}" for a in out["test_accuracy"])
        print(f"[{spec['id']}] test accuracy per seed: {accs}", flush=True)
        return out


def _cost(spec) -> float:
    if spec["method"] == "ep":
        return float(spec["options"].get("relax_steps", 8))  # measured: ~7× a DFA step
    return {"dfa": 1.0, "bp": 1.0}.get(spec["method"], 1.5)


def _json(value):
    """Arrays as nested lists with None where not finite (JSON has no NaN)."""
    arr = np.asarray(value, np.float64)
    if arr.ndim == 0:
        return float(arr) if np.isfinite(arr) else None
    return [_json(v) for v in arr]


def study(config, runner_: runner.Runner):
    s = AuditStudy(config, runner_)
    runs = [s.make_run(spec) for spec in config.runs]
    sources = sorted({s.data(spec["arch"]).source for spec in config.runs})
    print("data: " + "; ".join(sources), flush=True)
    runner_.plan(runs)
    done = {run.id: runner_.run(run) for run in runs}
    return report.write(config, runner_.workdir, done), {"data": sources, "runs": done}


def check(config) -> None:
    for spec in config.runs:
        if spec["arch"] not in config.archs:
            raise ValueError(f"run {spec['id']} names architecture {spec['arch']!r}, not in archs")
        if spec["method"] not in rules.RULES:
            raise ValueError(f"run {spec['id']}: unknown method {spec['method']!r}")
    if config.eval_size % config.sub_batches:
        raise ValueError(
            f"eval_size {config.eval_size} must split into sub_batches = {config.sub_batches}"
        )
    unknown = set(config.tables) - set(report.TABLES)
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}; known: {sorted(report.TABLES)}")


def run(config, workdir: str | Path) -> dict:
    return runner.run_study(config, workdir, study, check=check)


if __name__ == "__main__":
    cli.run_study("fa_audit", run, "Audit config.")
