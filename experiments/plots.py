"""PNG plots of results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(
    path: str | os.PathLike,
    series: dict,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    marker: str | None = "o",
    logy: bool = False,
    vlines: tuple = (),
):
    """series: {label: (x, mean, std or None)}; draws mean lines with ±std bands, optional log
    y axis and dashed vertical lines (e.g. distribution shifts)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for x_line in vlines:
        ax.axvline(x_line, color="grey", linestyle="--", linewidth=1)
    if logy:
        ax.set_yscale("log")
    for label, (x, mean, std) in series.items():
        (line,) = ax.plot(x, mean, marker=marker, label=label)
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
