"""PNG plots of results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(path: str | os.PathLike, series: dict, *, xlabel: str, ylabel: str, title: str):
    """series: {label: (x, mean, std or None)}; draws mean lines with ±std bands."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label, (x, mean, std) in series.items():
        (line,) = ax.plot(x, mean, marker="o", label=label)
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
