"""Baselines that need no synthesis, run under the same protocol as D3S.

`random`: IPC real training images per class chosen with a seed; `herding` and `kcenter`:
coresets of the teacher's penultimate features (see `coreset`). Each is then relabelled and
evaluated like a distilled set. The `full` upper bound (a student on the whole training set) lives in
`evaluate.run_evaluate_full`. The `sre2l` baseline is an objective of `distill`.
"""

from __future__ import annotations

import numpy as np
import torch

from .artifacts import check_same_classes
from .artifacts.images import SyntheticSet, load_synthetic
from .artifacts.teacher import Teacher
from .data import load_dataset
from .dataset_spec import DatasetSpec
from .errors import D3SError
from .runtime import generator
from .shard import Shard
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
            raise D3SError(
                f"dataset '{data.spec.name}': class {data.classes[c]!r} has {len(idx)} training images, fewer than IPC {ipc}"
            )
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:ipc].numpy()])
    return chosen


def real_images(
    data, chosen: list[np.ndarray], slots: list[tuple[int, int]], image_size: int, chunk: int = 256
) -> torch.Tensor:
    """uint8 [n, C, H, W] images of the (IPC index, class) slots, resized to the teacher's input size.

    Read and resized a chunk at a time: a float copy of a whole selection would be 4x its uint8
    size (260 GB for ImageNet-21K at IPC 20).
    """
    out = torch.empty(len(slots), data.channels, image_size, image_size, dtype=torch.uint8)
    for a in range(0, len(slots), chunk):
        x = torch.stack([data.train_plain[int(chosen[c][i])][0] for i, c in slots[a : a + chunk]])
        out[a : a + chunk] = resize_uint8(x, image_size)
    return out


def initial_images(
    init: str, teachers: list[Teacher], shard: Shard, seed: int, data: str | None, init_images: str | None
) -> torch.Tensor | None:
    """The starting pixels `distill --init` asks for: none for noise, the random baseline's images of the
    shard's slots for real (from the dataset spec `data`), a coreset's for herding / kcenter."""
    slots = shard.slots(len(teachers[0].classes))
    if init == "real":
        if data is None:
            raise D3SError("distill: --init real needs --data (the dataset to take the starting images from)")
        return initial_real_images(DatasetSpec.parse(data), teachers, slots, seed)
    if init != "noise":
        if init_images is None:
            raise D3SError(f"distill: --init {init} needs --init-images (the {init} selection's images artifact)")
        return initial_coreset_images(init_images, teachers, slots, init)
    return None


def initial_real_images(
    spec: DatasetSpec, teachers: list[Teacher], slots: list[tuple[int, int]], seed: int
) -> torch.Tensor:
    """Starting pixels for `distill --init real`: the random baseline's images of the same slots."""
    data = load_dataset(spec, splits=("train",))
    t0 = teachers[0]
    check_same_classes(t0.classes, t0.path, data.classes, f"dataset '{spec.name}'")
    chosen = real_choice(data, 1 + max(i for i, _ in slots), seed)
    return real_images(data, chosen, slots, t0.image_size)


def initial_coreset_images(
    path: str, teachers: list[Teacher], slots: list[tuple[int, int]], selection: str
) -> torch.Tensor:
    """Starting pixels for `distill --init herding|kcenter`: that selection's images of the same slots."""
    s = load_synthetic(path)
    t0 = teachers[0]
    if s.method != selection:
        raise D3SError(f"{path}: holds a '{s.method}' selection, distill --init {selection} needs a '{selection}' one")
    check_same_classes(t0.classes, t0.path, s.classes, path)
    if s.images.shape[1] != t0.image_size:
        raise D3SError(f"{path}: images are {s.images.shape[1]} px, the teacher's input is {t0.image_size} px")
    row = {(int(i), int(c)): r for r, (i, c) in enumerate(zip(s.ipc_index, s.labels))}
    missing = [slot for slot in slots if slot not in row]
    if missing:
        raise D3SError(
            f"{path}: has no image for (IPC index, class) {missing[0]} (it holds IPC {s.ipc_range[1]}); "
            "select at least the shard's IPC"
        )
    return torch.from_numpy(s.images[[row[slot] for slot in slots]]).permute(0, 3, 1, 2).contiguous()


def select_real(
    spec: DatasetSpec,
    teachers: list[Teacher],
    ipc: int,
    seed: int,
    selection: str = "random",
    device: torch.device | str = "cpu",
    threads: int = 0,
) -> SyntheticSet:
    """IPC real training images per class: seeded uniform picks, or a coreset of the teachers' features."""
    from .coreset import SELECTIONS, coreset_choice, penultimate_features

    if selection not in SELECTIONS:
        raise D3SError(f"select-real: selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    data = load_dataset(spec, splits=("train",))
    t0 = teachers[0]
    check_same_classes(t0.classes, t0.path, data.classes, f"dataset '{spec.name}'")
    config = {"ipc": ipc, "selection": "uniform per class" if selection == "random" else selection}
    if selection == "random":
        chosen = real_choice(data, ipc, seed)
    else:
        device = torch.device(device)
        feats = penultimate_features(
            [t.model.to(device) for t in teachers],
            data.train_plain,
            t0.normalizer(device),
            t0.image_size,
            device,
            workers=data.loader_workers(threads),
        )
        try:
            picks = coreset_choice(feats, data.train.labels, data.num_classes, ipc, selection, data.classes)
        except D3SError as e:
            raise D3SError(f"dataset '{spec.name}': {e}") from None
        chosen = [p.numpy() for p in picks]
        config["features"] = "teachers' L2-normalised classifier inputs, concatenated"
    order = [(i, c) for i in range(ipc) for c in range(data.num_classes)]  # (IPC index, class), as distill
    images = real_images(data, chosen, order, t0.image_size)
    source_index = data.train_index if data.train_index is not None else np.arange(len(data.train))
    return SyntheticSet(
        images=images.permute(0, 2, 3, 1).numpy(),
        labels=np.asarray([c for _, c in order], dtype=np.int64),
        ipc_index=np.asarray([i for i, _ in order], dtype=np.int64),
        classes=data.classes,
        method=selection,
        teachers=[t.weights_sha256 for t in teachers],
        norm_mean=t0.mean,
        norm_std=t0.std,
        hflip=t0.hflip,
        config=config,
        seed=seed,
        inputs={
            "dataset": spec.to_dict(),
            "teachers": [t.path for t in teachers],
            "train_indices": [int(source_index[chosen[c][i]]) for i, c in order],
        },
    )
