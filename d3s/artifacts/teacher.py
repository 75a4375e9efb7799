"""The teacher artifact ('teacher'): a network's weights, architecture, input format and test accuracy.

Weights live as plain HDF5 datasets (one per state-dict tensor): loading them executes no
pickled code. `weights_sha256` identifies a teacher across stages.

Importing this module imports no torch (the summary reads teachers' headers); torch and the
model registry are imported where weights become tensors and a network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..errors import D3SError
from . import atomic_path, check_same_classes, open_artifact, read_classes, read_json_attr, write_provenance

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..transforms import Normalizer


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
        from ..transforms import Normalizer

        return Normalizer(self.mean, self.std, device)


@dataclass
class TeacherHeader:
    """What a teacher artifact says about itself, without its weights."""

    path: str
    arch: str
    seed: int  # -1: imported weights (no training seed)
    test_top1: float


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_teacher(
    path: str | Path,
    state: dict[str, torch.Tensor],
    *,
    arch: str,
    classes: Sequence[str],
    channels: int,
    image_size: int,
    mean: list[float],
    std: list[float],
    hflip: bool,
    dataset: dict,
    test_top1: float,
    test_top5: float,
    weights_sha256: str,
    n_train: int,
    n_test: int,
    config: dict[str, Any],
    seed: int | None,
    inputs: dict[str, Any],
    losses=(),
) -> None:
    """Write a teacher artifact: `state` (CPU tensors) and what it was trained and tested on (`dataset`: its spec)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(f, "teacher", config=config, seed=seed, classes=classes, inputs={"dataset": dataset, **inputs})
        f.attrs.update(
            arch=arch,
            num_classes=len(classes),
            channels=channels,
            image_size=image_size,
            norm_mean=mean,
            norm_std=std,
            hflip=hflip,
            dataset=json.dumps(dataset, sort_keys=True),
            test_top1=test_top1,
            test_top5=test_top5,
            weights_sha256=weights_sha256,
            n_train=n_train,
            n_test=n_test,
        )
        f.create_dataset("train_loss", data=np.asarray(losses, dtype=np.float32))
        g = f.create_group("state_dict")
        for name, tensor in state.items():
            g.create_dataset(name, data=tensor.numpy())


def read_teacher_header(path: str | Path) -> TeacherHeader:
    with open_artifact(path, "teacher") as f:
        return TeacherHeader(str(path), str(f.attrs["arch"]), int(f.attrs["seed"]), float(f.attrs["test_top1"]))


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> Teacher:
    import torch

    from ..models import build_model

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
            path=str(path),
            model=model.to(device).eval(),
            arch=arch,
            classes=classes,
            mean=[float(v) for v in f.attrs["norm_mean"]],
            std=[float(v) for v in f.attrs["norm_std"]],
            image_size=int(f.attrs["image_size"]),
            channels=int(f.attrs["channels"]),
            hflip=bool(f.attrs["hflip"]),
            weights_sha256=str(f.attrs["weights_sha256"]),
            test_top1=float(f.attrs["test_top1"]),
            dataset=read_json_attr(f, "dataset"),
        )
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher


def load_teachers(paths: list[str], device) -> list[Teacher]:
    """Load several teachers and check they share class order, input format and normalisation."""
    teachers = [load_teacher(p, device) for p in paths]
    first = teachers[0]
    for t in teachers[1:]:
        check_same_classes(first.classes, first.path, t.classes, t.path)
        for key in ("image_size", "channels", "mean", "std"):
            if getattr(t, key) != getattr(first, key):
                raise D3SError(
                    f"{t.path}: {key}={getattr(t, key)} differs from {first.path} ({getattr(first, key)}); "
                    "teachers used together must share the input format"
                )
    return teachers


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file (no pickled code is executed):
    the pretrained weights `import-teacher` turns into a teacher artifact."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise D3SError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad input file
        raise D3SError(f"{path}: not a readable safetensors or weights-only torch checkpoint ({e})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise D3SError(f"{path}: expected a mapping of parameter names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}
