"""Presets for the feedback-alignment audit (seeds/fa_audit_paper.tex).

    python -m experiments.fa_audit --config=experiments/configs/fa_audit.py:audit
    python -m experiments.fa_audit --config=experiments/configs/fa_audit.py:smoke

`smoke` is one run of every kind with every table (the test suite's); the `<preset>_smoke`
variants shrink one preset.

Presets (each also as `<preset>_smoke`: a 2048-sample subset, 2 epochs, narrow 2-block models, 2
seeds, fewer runs):
- audit: Tables 1–2 — BP, EP, DFA, Credit Bridge, State Bridge on the 4-block d = 256 pre-LN
  ResidualMLP, the frozen-random-blocks baseline, the diagnostics behind the verdicts and their
  threshold robustness;
- controls: Tables 3–5 — DFA at λ ∈ {0, 1e-4, 1e-2, 1e-1}, BP at λ ∈ {0, 1e-2}, the positive and
  negative ρ controls, null calibration with 20 fresh B_l, early-epoch vanilla DFA;
- cross_arch: when each diagnostic fires per epoch, BP and DFA on the ResidualMLP, ViT-Mini,
  StudentNet (teacher task) and SmallCNN;
- paper: audit + controls + cross_arch on CIFAR-10 at the paper's schedule (100 epochs; needs
  CIFAR-10 under --config.data_root or $CIFAR10).
The `cpu` schedule of audit / controls / cross_arch is the paper's architecture on
Fashion-MNIST (Debian package, our stand-in for CIFAR-10) with fewer epochs.

Shared protocol: AdamW (lr 1e-3, weight decay 0.01, cosine decay to 0 over the run), batch 128
(ours; the paper does not give it), seeds 42, 123, 456; diagnostics on a fixed evaluation batch of
the first 1000 test images after every epoch; test accuracy on the full test split. The frozen
baseline (diagnostic (d)) is one run per architecture: BP through the deep blocks frozen at their
random init, the embedding and head trained (our reading: the paper's baseline is the same 0.349
under DFA, SB and CB, so it does not depend on the method).
"""

import ml_collections

from experiments.configs import unique_runs

SEEDS = (42, 123, 456)
AUDIT_METHODS = ("bp", "ep", "dfa", "credit_bridge", "state_bridge")
ARCHS = {
    "mlp": {"kind": "residual_mlp", "d": 256, "blocks": 4},
    "vit": {"kind": "vit_mini", "patch": 4, "d": 64, "heads": 4, "mlp": 128, "blocks": 4},
    "student": {"kind": "student_net", "d": 256, "blocks": 4, "d_in": 64, "width": 128},
    "cnn": {"kind": "small_cnn", "channels": [16, 32, 32, 32], "pool": [True, True, False, False]},
}
SMOKE_ARCHS = {
    "mlp": {"kind": "residual_mlp", "d": 16, "blocks": 2},
    "vit": {"kind": "vit_mini", "patch": 7, "d": 8, "heads": 2, "mlp": 16, "blocks": 2},
    "student": {"kind": "student_net", "d": 16, "blocks": 2, "d_in": 8, "width": 16},
    "cnn": {"kind": "small_cnn", "channels": [4, 4], "pool": [True, False]},
}


def _run(arch, method, options=None, label=None, frozen=False):
    options = dict(options or {})
    name = label or method
    run_id = f"{arch}/{method}" + "".join(f"_{k}{v:g}" for k, v in sorted(options.items()))
    return {
        "id": run_id + ("/frozen" if frozen else ""),
        "arch": arch,
        "method": method,
        "options": options,
        "label": name,
        "frozen": frozen,
    }


def _frozen(arch):
    return _run(arch, "bp", label="frozen random blocks (BP on embedding + head)", frozen=True)


LABELS = {
    "bp": "BP",
    "ep": "EP",
    "dfa": "DFA",
    "credit_bridge": "Credit Bridge (ours)",
    "state_bridge": "State Bridge (ours)",
}


def _audit():
    return [_run("mlp", m, label=LABELS[m]) for m in AUDIT_METHODS] + [_frozen("mlp")]


def _controls(lams=(1e-4, 1e-2, 1e-1)):
    runs = [_run("mlp", "dfa", {"penalty": lam}, label=f"DFA λ={lam:g}") for lam in lams]
    runs += [
        _run("mlp", "dfa", label="DFA λ=0"),
        _run("mlp", "bp", label="BP λ=0"),
        _run("mlp", "bp", {"penalty": 1e-2}, label="BP λ=0.01"),
        _frozen("mlp"),
    ]
    return runs


def _cross_arch(archs=("mlp", "vit", "student", "cnn"), methods=("bp", "dfa")):
    runs = []
    for arch in archs:
        runs += [_run(arch, m, label=LABELS[m]) for m in methods] + [_frozen(arch)]
    return runs


SMOKE_RUNS = {  # the smoke variants keep every table's code path with fewer runs
    "controls": lambda: _controls(lams=(1e-2,)),
    "cross_arch": lambda: _cross_arch(archs=("vit", "student", "cnn"), methods=("dfa",)),
}


PRESETS = {
    "audit": ("Tables 1–2: the five-method audit and the decision-utility ablation", _audit, 10),
    "controls": ("Tables 3–5: the two-mode controls (λ sweep, capacity, ρ, null)", _controls, 10),
    "cross_arch": ("Cross-architecture: per-epoch diagnostic firing", _cross_arch, 3),
}
TABLES = {
    "audit": ["audit", "diagnostics", "decision", "robustness", "template"],
    "controls": ["lambda", "capacity", "mode2", "template"],
    "cross_arch": ["cross_arch", "template"],
}


def _smoke_all():
    """One run of every kind, for the test suite: the audit's five methods, a penalised DFA and
    BP, DFA on StudentNet (no terminal LN), and each architecture's frozen baseline. SmallCNN is
    left to tests/fa_audit (DFA on image states, its diagnostics): here it would add two
    compilations (~1 min) and no code path of the study."""
    runs = _audit() + _controls(lams=(1e-2,)) + _cross_arch(("student",), ("dfa",))
    return unique_runs(runs)


def get_config(arg: str = "audit") -> ml_collections.ConfigDict:
    smoke = arg.endswith("_smoke") or arg == "smoke"
    name = arg.removesuffix("_smoke")
    config = ml_collections.ConfigDict()
    if name == "smoke":
        title, epochs, tables = (
            "Smoke: every table on one run of every kind",
            2,
            sum(TABLES.values(), []),
        )
        runs = _smoke_all()
        config.dataset = "fashion_mnist"
    elif name == "paper":
        runs = unique_runs(_audit() + _controls() + _cross_arch())
        title, epochs, tables = (
            "The paper's schedule on CIFAR-10: every table",
            100,
            sum(TABLES.values(), []),
        )
        config.dataset = "cifar10"
    elif name in PRESETS:
        title, build, epochs = PRESETS[name]
        runs, tables = (SMOKE_RUNS.get(name, build) if smoke else build)(), TABLES[name]
        config.dataset = "fashion_mnist"
    else:
        raise ValueError(
            f"unknown preset {arg!r}; use one of {sorted([*PRESETS, 'paper'])}, optionally with "
            "'_smoke', or 'smoke' (one run of every kind, every table)"
        )
    config.preset = arg
    config.title = title
    config.tables = list(dict.fromkeys(tables))
    config.runs = runs
    config.archs = SMOKE_ARCHS if smoke else ARCHS
    config.data_root = ""  # CIFAR's folder ($CIFAR10 when empty)
    config.train_subset = 2048 if smoke else 0  # 0: the whole training split
    config.epochs = 2 if smoke else epochs
    config.batch = 64 if smoke else 128
    config.seeds = [42, 123] if smoke else list(SEEDS)
    config.lr = 1e-3
    config.weight_decay = 0.01
    config.eval_size = 200 if smoke else 1000  # the fixed evaluation batch (first test images)
    config.sub_batches = 4  # diagnostic (c): disjoint slices of the evaluation batch
    # ρ is not read by the cross-architecture table and costs 64 forward passes per layer there
    config.rho_directions = 16 if smoke else (0 if name == "cross_arch" else 64)
    config.rho_eps = 1e-3
    config.null_draws = 4 if smoke else 20
    config.teacher = {"train": 4096 if smoke else 60_000, "test": 1000 if smoke else 10_000}
    config.data_seed = 0
    config.early_epochs = [1, 2]  # the disambiguation's early vanilla-DFA checkpoints
    return config
