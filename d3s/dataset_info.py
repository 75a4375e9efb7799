"""What a dataset is, computed once per dataset: class order, split sizes, image format, normalisation.

Written by `d3s dataset-info` (rule `dataset_info`) and read by teacher training and import, so
the normalisation is computed once and every teacher of a dataset uses the same one.
"""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import atomic_path, code_version
from .data import channel_moments, load_dataset
from .dataset_spec import DatasetSpec
from .errors import D3SError
from .runtime import log


def dataset_info(spec: DatasetSpec, threads: int = 0) -> dict:
    data = load_dataset(spec, splits=("train", "val", "test"))
    if spec.mean is not None and spec.std is not None:
        mean, std, source = list(spec.mean), list(spec.std), "config"
    else:
        log.info("computing the normalisation over %d training images of '%s'", len(data.train), spec.name)
        mean, std = channel_moments(data.train_plain, workers=data.loader_workers(threads))
        source = "computed from the training split"
    return {
        "name": spec.name,
        "spec": spec.to_dict(),
        "classes": data.classes,
        "num_classes": data.num_classes,
        "n_train": len(data.train),
        "n_val": len(data.val) if data.val is not None else 0,
        "n_test": len(data.test),
        "channels": data.channels,
        "image_size": data.image_size,
        "mean": mean,
        "std": std,
        "normalisation": source,
        "code_version": code_version(),
    }


def write_dataset_info(spec: DatasetSpec, out: str, threads: int = 0) -> dict:
    info = dataset_info(spec, threads)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    log.info(
        "%s: %d classes, %d train / %d test images, %d channels, %d px",
        spec.name,
        info["num_classes"],
        info["n_train"],
        info["n_test"],
        info["channels"],
        info["image_size"],
    )
    return info


def read_dataset_info(path: str | Path) -> dict:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise D3SError(f"{path}: unreadable dataset-info file ({e})") from None
    for key in ("classes", "mean", "std"):
        if key not in info:
            raise D3SError(f"{path}: dataset-info file has no '{key}'")
    return info
