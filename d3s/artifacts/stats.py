"""The statistics artifact ('stats'): per-layer mean and covariance of a teacher's BatchNorm inputs.

One group per layer (`layers/000`, ...) in the teacher's layer order, float64 `mean` [D] and `cov`
[D, D]; the root names the teacher's weights (`teacher_sha256`), so statistics are never matched
against another teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..errors import D3SError
from . import atomic_path, check_same_classes, open_artifact, read_classes, write_provenance
from .teacher import Teacher


@dataclass
class LayerStats:
    name: str
    mean: torch.Tensor  # float64 [D]
    cov: torch.Tensor  # float64 [D, D]
    count: int


def save_stats(
    path: str | Path,
    layers: list[LayerStats],
    teacher: Teacher,
    *,
    pooling: str,
    n_images: int,
    config: dict[str, Any],
    seed: int | None,
    dataset: dict,
) -> None:
    """Write a statistics artifact of `teacher` over `n_images` training images of `dataset` (its spec)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(
            f,
            "stats",
            config=config,
            seed=seed,
            classes=teacher.classes,
            inputs={"teacher": teacher.path, "dataset": dataset},
        )
        f.attrs.update(
            teacher_sha256=teacher.weights_sha256,
            teacher_arch=teacher.arch,
            pooling=pooling,
            hook="bn_input",
            n_images=n_images,
            layer_names=[s.name for s in layers],
        )
        g = f.create_group("layers")
        for i, s in enumerate(layers):
            lg = g.create_group(f"{i:03d}")
            lg.attrs.update(name=s.name, count=s.count, dim=len(s.mean))
            lg.create_dataset("mean", data=s.mean.numpy())
            lg.create_dataset("cov", data=s.cov.numpy())


def load_stats(path: str | Path, teacher: Teacher) -> list[LayerStats]:
    """Read a stats artifact and check it was computed from this teacher."""
    with open_artifact(path, "stats") as f:
        if f.attrs["teacher_sha256"] != teacher.weights_sha256:
            raise D3SError(
                f"{path}: statistics were computed from teacher weights {str(f.attrs['teacher_sha256'])[:12]}, "
                f"but {teacher.path} has weights {teacher.weights_sha256[:12]}; recompute the statistics "
                "or pass the matching teacher"
            )
        check_same_classes(teacher.classes, teacher.path, read_classes(f), str(path))
        layers = []
        for key in sorted(f["layers"]):
            g = f["layers"][key]
            layers.append(
                LayerStats(
                    str(g.attrs["name"]),
                    torch.from_numpy(np.asarray(g["mean"][()])),
                    torch.from_numpy(np.asarray(g["cov"][()])),
                    int(g.attrs["count"]),
                )
            )
    return layers


def stats_pooling(paths: list[str]) -> str:
    """The pooling the statistics were computed with; all files must agree."""
    poolings = {}
    for p in paths:
        with open_artifact(p, "stats") as f:
            poolings[p] = str(f.attrs["pooling"])
    if len(set(poolings.values())) != 1:
        raise D3SError(f"statistics files use different pooling: {poolings}")
    return next(iter(poolings.values()))
