"""PNG plots of results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os

import matplotlib
import numpy as np

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


def points_plot(
    path: str | os.PathLike,
    x,
    values,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    symlog_x: float | None = None,
    hlines: tuple = (),
):
    """values [K][S]: S per-seed points at each of the K x positions, and their median as a line;
    symlog_x: a linear x range around 0 of that half-width (for sweeps that include 0)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for y_line in hlines:
        ax.axhline(y_line, color="grey", linestyle="--", linewidth=1)
    if symlog_x:
        ax.set_xscale("symlog", linthresh=symlog_x)
    arr = np.asarray(values, np.float64)
    for s in range(arr.shape[1]):
        ax.plot(x, arr[:, s], "o", color="C0", alpha=0.45, markersize=4)
    ax.plot(x, np.nanmedian(arr, axis=1), "-", color="C1", label="median over seeds")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
