"""The distilled-images artifact ('images'): uint8 images, labels, IPC indices, loss curves, provenance.

Distillation shards and the merged set share this format, so every later stage reads either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .artifacts import atomic_path, check_same_classes, open_artifact, read_classes, read_json_attr, write_provenance
from .errors import D3SError


@dataclass
class SyntheticSet:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    ipc_index: np.ndarray  # int64 [N]: which of the IPC slots of its class an image fills
    classes: list[str]
    method: str
    teachers: list[str]  # weights_sha256 of the teachers used
    norm_mean: list[float]
    norm_std: list[float]
    hflip: bool
    config: dict
    seed: int
    loss_curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # block -> name -> per-iteration
    inputs: dict = field(default_factory=dict)

    @property
    def ipc_range(self) -> tuple[int, int]:
        return int(self.ipc_index.min()), int(self.ipc_index.max()) + 1


def save_synthetic(path: str | Path, s: SyntheticSet) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(f, "images", config=s.config, seed=s.seed, classes=s.classes, inputs=s.inputs)
        start, end = s.ipc_range
        f.attrs.update(method=s.method, teachers=json.dumps(s.teachers), norm_mean=s.norm_mean,
                       norm_std=s.norm_std, hflip=s.hflip, ipc_start=start, ipc_end=end, ipc=end - start,
                       image_size=s.images.shape[1], channels=s.images.shape[3])
        f.create_dataset("images", data=s.images, compression="gzip", chunks=True)
        f.create_dataset("labels", data=s.labels)
        f.create_dataset("ipc_index", data=s.ipc_index)
        for block, curves in s.loss_curves.items():
            for name, values in curves.items():
                f.create_dataset(f"loss_curves/{block}/{name}", data=np.asarray(values, dtype=np.float32))


def load_synthetic(path: str | Path) -> SyntheticSet:
    with open_artifact(path, "images") as f:
        curves = {}
        if "loss_curves" in f:
            curves = {b: {n: f["loss_curves"][b][n][()] for n in f["loss_curves"][b]} for b in f["loss_curves"]}
        return SyntheticSet(
            images=f["images"][()], labels=f["labels"][()].astype(np.int64), ipc_index=f["ipc_index"][()].astype(np.int64),
            classes=read_classes(f), method=str(f.attrs["method"]), teachers=json.loads(f.attrs["teachers"]),
            norm_mean=[float(v) for v in f.attrs["norm_mean"]], norm_std=[float(v) for v in f.attrs["norm_std"]],
            hflip=bool(f.attrs["hflip"]), config=read_json_attr(f, "config"), seed=int(f.attrs["seed"]),
            loss_curves=curves, inputs=read_json_attr(f, "inputs"),
        )


def load_loss_curves(path: str | Path) -> tuple[str, int, dict[str, dict[str, np.ndarray]]]:
    """Method, IPC and loss curves of an images artifact, without reading its images."""
    with open_artifact(path, "images") as f:
        curves = {}
        if "loss_curves" in f:
            curves = {b: {n: f["loss_curves"][b][n][()] for n in f["loss_curves"][b]} for b in f["loss_curves"]}
        return str(f.attrs["method"]), int(f.attrs["ipc"]), curves


def merge_synthetic(paths: list[str], expected_ipc: int | None = None) -> SyntheticSet:
    """Join shards (blocks of IPC indices x classes of one run) into one set ordered by (IPC index, class).

    Every (IPC index, class) slot must be filled exactly once.
    """
    if not paths:
        raise D3SError("merge: no shard files given")
    shards = [load_synthetic(p) for p in paths]
    first = shards[0]
    for p, s in zip(paths[1:], shards[1:]):
        check_same_classes(first.classes, paths[0], s.classes, p)
        for key in ("method", "teachers", "norm_mean", "norm_std", "config", "seed"):
            if getattr(s, key) != getattr(first, key):
                raise D3SError(f"merge: {p} has a different {key} than {paths[0]}; shards of one set must come from one run")
    ipc_index = np.concatenate([s.ipc_index for s in shards])
    labels = np.concatenate([s.labels for s in shards])
    ipc = expected_ipc if expected_ipc is not None else int(ipc_index.max()) + 1
    slots = ipc_index * len(first.classes) + labels
    counts = np.bincount(slots, minlength=ipc * len(first.classes))
    if len(counts) > ipc * len(first.classes):
        raise D3SError(f"merge: shards hold IPC index {int(ipc_index.max())}, expected {ipc} images per class")
    if (counts > 1).any():
        i, c = divmod(int(np.flatnonzero(counts > 1)[0]), len(first.classes))
        raise D3SError(f"merge: IPC index {i} of class {first.classes[c]!r} is in more than one shard")
    if (counts == 0).any():
        i, c = divmod(int(np.flatnonzero(counts == 0)[0]), len(first.classes))
        raise D3SError(f"merge: no shard holds IPC index {i} of class {first.classes[c]!r} "
                       f"({int((counts == 0).sum())} of {len(counts)} slots missing; expected {ipc} images per class)")
    order = np.argsort(slots, kind="stable")
    curves = {b: c for s in shards for b, c in s.loss_curves.items()}
    inputs = {k: v for k, v in first.inputs.items() if k != "shard"}
    return SyntheticSet(
        images=np.concatenate([s.images for s in shards])[order], labels=labels[order], ipc_index=ipc_index[order],
        classes=first.classes, method=first.method, teachers=first.teachers, norm_mean=first.norm_mean,
        norm_std=first.norm_std, hflip=first.hflip, config=first.config, seed=first.seed,
        loss_curves=dict(sorted(curves.items())), inputs={"shards": [str(p) for p in paths], **inputs},
    )
