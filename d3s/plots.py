"""Figures a user reads: accuracy vs IPC per method, distillation loss curves, image grids."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster nodes
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .artifacts import atomic_path  # noqa: E402
from .artifacts.images import load_loss_curves, read_header, read_rows  # noqa: E402
from .errors import D3SError  # noqa: E402
from .methods import get_method, method_names  # noqa: E402

LINE_STYLE = {"soft": "-", "hard": ":"}  # hard-label students dotted


def _save(fig, out: str) -> None:
    suffix = Path(out).suffix or ".png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=suffix.lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy(summary_tsv: str, out: str) -> None:
    """Top-1 (mean +- std over seeds) against IPC, one line per (method, student, labels); `full` as a band
    (soft labels solid, hard dotted; the full-data band of the first label mode)."""
    with open(summary_tsv) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        raise D3SError(f"{summary_tsv}: no rows to plot")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    students = sorted({r["student"] for r in rows})
    modes = [m for m in LINE_STYLE if any(r.get("labels", "soft") == m for r in rows)]
    per_ipc = [method for method in map(get_method, method_names()) if method.per_ipc]
    for student in students:
        for mode in modes:
            for method in per_ipc:
                pts = sorted(
                    (int(r["ipc"]), float(r["top1_mean"]), float(r["top1_std"]))
                    for r in rows
                    if r["method"] == method.name
                    and r["student"] == student
                    and r["ipc"] != "all"
                    and r.get("labels", "soft") == mode
                )
                if not pts:
                    continue
                x, y, e = map(np.asarray, zip(*pts))
                name = method.label if len(students) == 1 else f"{method.label} ({student})"
                name += f", {mode} labels" if len(modes) > 1 else ""
                ax.errorbar(
                    x, y, yerr=e, label=name, color=method.colour, marker=method.marker, capsize=3, ls=LINE_STYLE[mode]
                )
        for r in rows:
            if r["method"] == "full" and r["student"] == student and r.get("labels", "soft") == modes[0]:
                m, s = float(r["top1_mean"]), float(r["top1_std"])
                ax.axhspan(m - s, m + s, color="0.85")
                ax.axhline(m, color="0.4", ls="--", label="full data" if len(students) == 1 else f"full ({student})")
    teacher = next((r["teacher_top1"] for r in rows if r.get("teacher_top1")), "")
    if teacher:
        ax.axhline(float(teacher), color="k", ls=":", label="teacher")
    ax.set_xscale("log")
    ipcs = sorted({int(r["ipc"]) for r in rows if r["ipc"] != "all"})
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("student top-1 on the real test set (%)")
    ax.set_title(f"{rows[0]['dataset']}: final-epoch accuracy, mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out)


def plot_losses(images_paths: list[str], out: str) -> None:
    """Distillation loss curves (total, matching term, CE) of every shard of every set."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for path in images_paths:
        method, ipc, loss_curves = load_loss_curves(path)
        for block, curves in loss_curves.items():
            for ax, key in zip(axes, ("total", "match", "ce")):
                if key in curves:
                    ax.plot(curves[key], lw=1, label=f"{method} IPC {ipc} {block}")
    for ax, title in zip(axes, ("total loss", "statistics matching (KL or BN)", "cross-entropy")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    _save(fig, out)


def drawn_rows(labels: np.ndarray, ipc_index: np.ndarray, classes: int, ipc: int) -> np.ndarray:
    """Rows of a set that land in a grid of its first `classes` classes x first `ipc` IPC indices, in file order."""
    return np.flatnonzero((labels < classes) & (ipc_index < ipc))


def image_grid(tiles: np.ndarray, labels: np.ndarray, ipc_index: np.ndarray, classes: int, ipc: int) -> np.ndarray:
    """Tiles [n, H, W, C] laid out one row per class, one column per IPC index, 1 px white gaps; empty cells white."""
    h, w, c = tiles.shape[1:]
    grid = np.full((classes * (h + 1), ipc * (w + 1), c), 255, dtype=np.uint8)
    for img, label, i in zip(tiles, labels, ipc_index):
        if label < classes and i < ipc:
            grid[label * (h + 1) : label * (h + 1) + h, i * (w + 1) : i * (w + 1) + w] = img
    return grid


def plot_images(images_path: str, out: str, max_classes: int = 20, max_ipc: int = 10) -> None:
    """A grid of distilled images: one row per class, one column per IPC index.

    Reads only the images it draws: a merged ImageNet-21K set is tens of GB.
    """
    s = read_header(images_path)
    classes = min(len(s.classes), max_classes)
    ipc = min(s.ipc_range[1], max_ipc)
    rows = drawn_rows(s.labels, s.ipc_index, classes, ipc)
    grid = image_grid(read_rows(images_path, rows), s.labels[rows], s.ipc_index[rows], classes, ipc)
    h, w, c = s.image_shape[1:]
    fig, ax = plt.subplots(figsize=(max(2.0, ipc * 0.6 + 1), max(2.0, classes * 0.6)))
    ax.imshow(grid.squeeze(-1) if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.set_yticks([r * (h + 1) + h / 2 for r in range(classes)], s.classes[:classes], fontsize=7)
    ax.set_xticks([i * (w + 1) + w / 2 for i in range(ipc)], [str(i) for i in range(ipc)], fontsize=7)
    ax.set_xlabel("IPC index")
    ax.set_title(
        f"{s.method}, IPC {s.ipc_range[1]}" + (f" (first {classes} classes)" if classes < len(s.classes) else ""),
        fontsize=9,
    )
    _save(fig, out)
