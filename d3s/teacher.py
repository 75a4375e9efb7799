"""Stage 1: train a teacher on the real training set and store it as a self-describing HDF5 file.

Weights live as plain HDF5 datasets (one per state-dict tensor): loading them executes no
pickled code. `weights_sha256` identifies a teacher across stages.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from .artifacts import atomic_path, open_artifact, read_classes, read_json_attr, write_provenance
from .data import DatasetSpec, channel_moments, load_dataset
from .errors import D3SError
from .models import bn_layers, build_model
from .runtime import log
from .training import RealTrainingParams, accuracy, train_on_real
from .transforms import Normalizer


@dataclass
class Teacher:
    """A trained teacher loaded from its artifact, with everything later stages need to use it."""

    path: str
    model: nn.Module
    arch: str
    classes: list[str]
    mean: list[float]
    std: list[float]
    image_size: int
    channels: int
    hflip: bool
    weights_sha256: str
    test_top1: float
    dataset: dict

    def normalizer(self, device) -> Normalizer:
        return Normalizer(self.mean, self.std, device)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_teacher(
    spec: DatasetSpec,
    arch: str,
    params: RealTrainingParams,
    seed: int,
    out: str,
    device: torch.device,
    threads: int = 0,
) -> dict:
    data = load_dataset(spec)
    workers = data.loader_workers(threads)
    if spec.mean is not None and spec.std is not None:
        mean, std = list(spec.mean), list(spec.std)
    else:
        mean, std = channel_moments(data.train, workers=workers)
        log.info("normalisation computed from %d training images: mean %s std %s", len(data.train),
                 np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    if len(mean) != data.channels or len(std) != data.channels:
        raise D3SError(f"dataset '{spec.name}': mean/std have {len(mean)}/{len(std)} values, images have {data.channels} channels")
    normalizer = Normalizer(mean, std, device)
    torch.manual_seed(seed)
    model = build_model(arch, data.num_classes, data.channels, data.image_size)
    bn_layers(model, f"architecture '{arch}'")
    log.info("training %s (%d parameters) on %d images of '%s', %d classes, %dpx",
             arch, sum(p.numel() for p in model.parameters()), len(data.train), spec.name, data.num_classes, data.image_size)
    losses = train_on_real(model, data.train, normalizer, data.image_size, spec.crop_scale, spec.hflip, params, seed, device, workers)
    top1, top5 = accuracy(model, data.test, normalizer, data.image_size, device, workers=workers)
    log.info("teacher %s seed %d: test top-1 %.2f%%, top-5 %.2f%%", arch, seed, 100 * top1, 100 * top5)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = weights_digest(state)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(f, "teacher", config={"arch": arch, **asdict(params)}, seed=seed,
                         classes=data.classes, inputs={"dataset": spec.to_dict()})
        f.attrs.update(
            arch=arch, num_classes=data.num_classes, channels=data.channels, image_size=data.image_size,
            norm_mean=mean, norm_std=std, hflip=spec.hflip, dataset=json.dumps(spec.to_dict(), sort_keys=True),
            test_top1=top1, test_top5=top5, weights_sha256=digest, n_train=len(data.train), n_test=len(data.test),
        )
        f.create_dataset("train_loss", data=np.asarray(losses, dtype=np.float32))
        g = f.create_group("state_dict")
        for name, tensor in state.items():
            g.create_dataset(name, data=tensor.numpy())
    return {"test_top1": top1, "test_top5": top5, "weights_sha256": digest}


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> Teacher:
    with open_artifact(path, "teacher") as f:
        arch = str(f.attrs["arch"])
        classes = read_classes(f)
        model = build_model(arch, int(f.attrs["num_classes"]), int(f.attrs["channels"]), int(f.attrs["image_size"]))
        state = {name: torch.from_numpy(np.asarray(ds[()])) for name, ds in f["state_dict"].items()}
        # h5py groups nest on '/', not '.', so names come back as stored
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise D3SError(f"{path}: weights do not fit architecture '{arch}': {e}") from None
        teacher = Teacher(
            path=str(path), model=model.to(device).eval(), arch=arch, classes=classes,
            mean=[float(v) for v in f.attrs["norm_mean"]], std=[float(v) for v in f.attrs["norm_std"]],
            image_size=int(f.attrs["image_size"]), channels=int(f.attrs["channels"]), hflip=bool(f.attrs["hflip"]),
            weights_sha256=str(f.attrs["weights_sha256"]), test_top1=float(f.attrs["test_top1"]),
            dataset=read_json_attr(f, "dataset"),
        )
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher


def load_teachers(paths: list[str], device) -> list[Teacher]:
    """Load several teachers and check they share class order, input format and normalisation."""
    from .artifacts import check_same_classes

    teachers = [load_teacher(p, device) for p in paths]
    first = teachers[0]
    for t in teachers[1:]:
        check_same_classes(first.classes, first.path, t.classes, t.path)
        for key in ("image_size", "channels", "mean", "std"):
            if getattr(t, key) != getattr(first, key):
                raise D3SError(f"{t.path}: {key}={getattr(t, key)} differs from {first.path} ({getattr(first, key)}); "
                               "teachers used together must share the input format")
    return teachers
