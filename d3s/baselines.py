"""Baselines that need no synthesis, run under the same protocol as D3S.

`random`: IPC real training images per class chosen with a seed (then relabelled and evaluated
like a distilled set). The `full` upper bound (a student on the whole training set) lives in
`evaluate.run_evaluate_full`. The `sre2l` baseline is an objective of `distill`.
"""

from __future__ import annotations

import numpy as np
import torch

from .artifacts import check_same_classes
from .data import DatasetSpec, load_dataset
from .errors import D3SError
from .runtime import generator
from .synthetic import SyntheticSet
from .teacher import Teacher
from .transforms import resize_uint8


def class_indices(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def real_choice(data, ipc: int, seed: int) -> list[np.ndarray]:
    """[class][IPC index] -> training-set index: a seeded permutation per class, its first `ipc`.

    Slot (i, c) is the same image for every ipc > i, so IPC 10's picks extend IPC 1's, and
    `distill --init real` starts a shard from the images `random` picks for the same slots.
    """
    g = generator(seed, 40)
    chosen = []
    for c, idx in enumerate(class_indices(data.train.labels.numpy(), data.num_classes)):
        if len(idx) < ipc:
            raise D3SError(f"dataset '{data.spec.name}': class {data.classes[c]!r} has {len(idx)} training images, fewer than IPC {ipc}")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:ipc].numpy()])
    return chosen


def real_images(data, chosen: list[np.ndarray], slots: list[tuple[int, int]], image_size: int,
                chunk: int = 256) -> torch.Tensor:
    """uint8 [n, C, H, W] images of the (IPC index, class) slots, resized to the teacher's input size.

    Read and resized a chunk at a time: a float copy of a whole selection would be 4x its uint8
    size (260 GB for ImageNet-21K at IPC 20).
    """
    out = torch.empty(len(slots), data.channels, image_size, image_size, dtype=torch.uint8)
    for a in range(0, len(slots), chunk):
        x = torch.stack([data.train_plain[int(chosen[c][i])][0] for i, c in slots[a:a + chunk]])
        out[a:a + chunk] = resize_uint8(x, image_size)
    return out


def initial_real_images(spec: DatasetSpec, teachers: list[Teacher], slots: list[tuple[int, int]], seed: int) -> torch.Tensor:
    """Starting pixels for `distill --init real`: the random baseline's images of the same slots."""
    data = load_dataset(spec, splits=("train",))
    t0 = teachers[0]
    check_same_classes(t0.classes, t0.path, data.classes, f"dataset '{spec.name}'")
    chosen = real_choice(data, 1 + max(i for i, _ in slots), seed)
    return real_images(data, chosen, slots, t0.image_size)


def select_real(spec: DatasetSpec, teachers: list[Teacher], ipc: int, seed: int) -> SyntheticSet:
    data = load_dataset(spec, splits=("train",))
    t0 = teachers[0]
    check_same_classes(t0.classes, t0.path, data.classes, f"dataset '{spec.name}'")
    chosen = real_choice(data, ipc, seed)
    order = [(i, c) for i in range(ipc) for c in range(data.num_classes)]  # (IPC index, class), as distill
    images = real_images(data, chosen, order, t0.image_size)
    return SyntheticSet(
        images=images.permute(0, 2, 3, 1).numpy(), labels=np.asarray([c for _, c in order], dtype=np.int64),
        ipc_index=np.asarray([i for i, _ in order], dtype=np.int64), classes=data.classes, method="random",
        teachers=[t.weights_sha256 for t in teachers], norm_mean=t0.mean, norm_std=t0.std, hflip=t0.hflip,
        config={"ipc": ipc, "selection": "uniform per class"}, seed=seed,
        inputs={"dataset": spec.to_dict(), "teachers": [t.path for t in teachers],
                "train_indices": [int(chosen[c][i]) for i, c in order]},
    )
