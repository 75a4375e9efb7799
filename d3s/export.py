"""Export a distilled set in the layouts other tools read.

  folders   <out>/<index>_<class>/<ipc>.png   class-major image folders, lossless PNG; the zero-padded
            index keeps the artifact's class order under torchvision's ImageFolder (sorted names),
            and classes.txt lists the names in that order
  sre2l     <out>/new<CCC>/class<CCC>_id<III>.png   SRe2L / CDA's recover layout (their code writes
            .jpg; PNG keeps the pixels exact and ImageFolder reads both)
  ddranking <out>/images.pt  float32 [N, C, H, W], normalised with the set's mean/std, class-major
            (class 0's IPC images, then class 1's: DD-Ranking's hard labels are
            arange(C).repeat_interleave(IPC)); labels.pt  [N, C] soft labels, the teachers' logits
            averaged over the stored label epochs (DD-Ranking takes one label per image); hard_labels.pt
            int64 [N]; meta.json (classes, mean, std, IPC). For LabelRobustScoreSoft(...).compute_metrics(
            image_tensor=torch.load("images.pt"), soft_labels=torch.load("labels.pt")).

Every layout writes into a temporary folder renamed into place at the end: a failed export leaves
no half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .artifacts.images import SyntheticSet
from .artifacts.labels import SoftLabelStore
from .errors import D3SError

FORMATS = ("folders", "sre2l", "ddranking")


def class_major(s: SyntheticSet) -> np.ndarray:
    """Row order of the set by (class, IPC index): the order every exported layout uses."""
    return np.lexsort((s.ipc_index, s.labels))


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "class"


def _save_png(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    image = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


def _folders(s: SyntheticSet, out: Path) -> None:
    width = max(3, len(str(len(s.classes) - 1)))
    folders = [out / f"{c:0{width}d}_{safe_name(name)}" for c, name in enumerate(s.classes)]
    for folder in folders:
        folder.mkdir()
    for row in class_major(s):
        _save_png(s.images[row], folders[s.labels[row]] / f"{int(s.ipc_index[row]):03d}.png")
    (out / "classes.txt").write_text("\n".join(s.classes) + "\n")


def _sre2l(s: SyntheticSet, out: Path) -> None:
    width = max(3, len(str(len(s.classes) - 1)))
    for c in range(len(s.classes)):
        (out / f"new{c:0{width}d}").mkdir()
    for row in class_major(s):
        c, i = int(s.labels[row]), int(s.ipc_index[row])
        _save_png(s.images[row], out / f"new{c:0{width}d}" / f"class{c:0{width}d}_id{i:03d}.png")
    (out / "classes.txt").write_text("\n".join(s.classes) + "\n")


def mean_soft_labels(labels_path: str, s: SyntheticSet, images_path: str) -> torch.Tensor:
    """[N, C] float32 in the set's row order: each image's teacher logits averaged over label epochs."""
    store = SoftLabelStore(labels_path, s, images_path)
    try:
        total = torch.zeros(len(s.labels), len(s.classes), dtype=torch.float64)
        rows = torch.arange(len(s.labels))
        for e in range(store.epochs):
            total += store.epoch(e)[2][rows].double()
        return (total / store.epochs).float()
    finally:
        store.close()


def normalised(s: SyntheticSet) -> torch.Tensor:
    x = torch.from_numpy(s.images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(s.norm_mean, dtype=torch.float32)[None, :, None, None]
    std = torch.tensor(s.norm_std, dtype=torch.float32)[None, :, None, None]
    return (x - mean) / std


def _ddranking(s: SyntheticSet, out: Path, labels_path: str | None, images_path: str) -> None:
    order = torch.from_numpy(class_major(s))
    torch.save(normalised(s)[order].contiguous(), out / "images.pt")
    torch.save(torch.from_numpy(s.labels)[order].long(), out / "hard_labels.pt")
    if labels_path:
        torch.save(mean_soft_labels(labels_path, s, images_path)[order].contiguous(), out / "labels.pt")
    start, end = s.ipc_range
    (out / "meta.json").write_text(
        json.dumps(
            {
                "classes": s.classes,
                "ipc": end - start,
                "mean": s.norm_mean,
                "std": s.norm_std,
                "method": s.method,
                "order": "class-major",
                "soft_labels": "teachers' logits averaged over label epochs" if labels_path else None,
            },
            indent=2,
        )
        + "\n"
    )


def export(s: SyntheticSet, images_path: str, fmt: str, out: str | Path, labels_path: str | None = None) -> Path:
    if fmt not in FORMATS:
        raise D3SError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists():
        raise D3SError(f"{out}: already exists; export writes a new folder (remove it or pick another)")
    if s.images.dtype != np.uint8:
        raise D3SError(f"{images_path}: images are {s.images.dtype}, expected uint8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        if fmt == "folders":
            _folders(s, tmp)
        elif fmt == "sre2l":
            _sre2l(s, tmp)
        else:
            _ddranking(s, tmp, labels_path, images_path)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
