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
import torch.nn.functional as F
from torch import nn

from .artifacts import atomic_path, check_same_classes, open_artifact, read_classes, read_json_attr, write_provenance
from .checkpoint import DEFAULT_MINUTES, Checkpointer
from .data import DatasetSpec, LoadedDataset, batches_per_epoch, channel_moments, load_dataset
from .dataset_info import read_dataset_info
from .distributed import ranks
from .engine import Trainer
from .errors import D3SError
from .hparams import RealTrainingParams
from .models import bn_layers, build_model
from .runtime import generator, log
from .training import accuracy, cosine_schedule, fit_on_real
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


def normalisation(data: LoadedDataset, info: str | None, threads: int) -> tuple[list[float], list[float], str]:
    """Mean/std from the dataset-info file (computed once per dataset by its rule), the spec, or the data."""
    spec = data.spec
    if info:
        d = read_dataset_info(info)
        check_same_classes(d["classes"], info, data.classes, f"dataset '{spec.name}'")
        mean, std, source = d["mean"], d["std"], info
    elif spec.mean is not None and spec.std is not None:
        mean, std, source = list(spec.mean), list(spec.std), "config"
    else:
        mean, std = channel_moments(data.train_plain, workers=data.loader_workers(threads))
        source = f"computed from {len(data.train)} training images"
    if len(mean) != data.channels or len(std) != data.channels:
        raise D3SError(f"dataset '{spec.name}': mean/std have {len(mean)}/{len(std)} values, images have {data.channels} channels")
    log.info("normalisation (%s): mean %s std %s", source, np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    return mean, std, source


def _write_teacher(out, model, arch, data: LoadedDataset, mean, std, config: dict, seed: int | None, inputs: dict,
                   device, threads: int, losses=()) -> dict:
    """Test the model on the dataset's test split and store it as a teacher artifact."""
    normalizer = Normalizer(mean, std, device)
    top1, top5 = accuracy(model, data.test, normalizer, data.image_size, device, workers=data.loader_workers(threads))
    log.info("teacher %s: test top-1 %.2f%%, top-5 %.2f%% on %d images", arch, 100 * top1, 100 * top5, len(data.test))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = weights_digest(state)
    spec = data.spec
    if not ranks().main:
        return {"test_top1": top1, "test_top5": top5, "weights_sha256": digest}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(f, "teacher", config=config, seed=seed, classes=data.classes,
                         inputs={"dataset": spec.to_dict(), **inputs})
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


def train_teacher(
    spec: DatasetSpec,
    arch: str,
    params: RealTrainingParams,
    seed: int,
    out: str,
    device: torch.device,
    threads: int = 0,
    info: str | None = None,
    resume_dir: str | None = None,
    checkpoint_every: int = 0,
    checkpoint_minutes: float = DEFAULT_MINUTES,
) -> dict:
    data = load_dataset(spec)
    mean, std, norm_source = normalisation(data, info, threads)
    checkpoint = Checkpointer(resume_dir, {"stage": "train-teacher", "arch": arch, "params": asdict(params), "seed": seed,
                                           "dataset": spec.to_dict(), "classes": data.classes, "mean": mean, "std": std},
                              checkpoint_every, checkpoint_minutes)
    torch.manual_seed(seed)
    model = build_model(arch, data.num_classes, data.channels, data.image_size)
    bn_layers(model, f"architecture '{arch}'")
    log.info("training %s (%d parameters) on %d images of '%s', %d classes, %dpx",
             arch, sum(p.numel() for p in model.parameters()), len(data.train), spec.name, data.num_classes, data.image_size)
    model.to(device)
    optimiser = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=0.9, weight_decay=params.weight_decay, nesterov=True)
    steps_per_epoch = batches_per_epoch(len(data.train), params.batch_size)
    schedule = cosine_schedule(optimiser, params.epochs * steps_per_epoch, params.warmup_epochs * steps_per_epoch)
    trainer = Trainer(model, optimiser, schedule, device, params.precision)
    losses = fit_on_real("teacher", trainer, data.train, Normalizer(mean, std, device), data.image_size, spec.crop_scale,
                         spec.hflip, params.batch_size, params.epochs, lambda logits, _x, y: F.cross_entropy(logits.float(), y),
                         {"order": generator(seed, 1), "views": generator(seed, 2)}, data.loader_workers(threads), checkpoint)
    result = _write_teacher(out, model, arch, data, mean, std, {"arch": arch, "normalisation": norm_source, **asdict(params)},
                            seed, {}, device, threads, losses)
    checkpoint.clear()
    return result


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file (no pickled code is executed)."""
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


def import_teacher(
    spec: DatasetSpec,
    arch: str,
    checkpoint: str,
    out: str,
    device: torch.device,
    threads: int = 0,
    info: str | None = None,
    class_list: str | None = None,
) -> dict:
    """Use pretrained weights instead of training: check them against the dataset, record their accuracy."""
    data = load_dataset(spec)
    if class_list:
        names = [c for c in Path(class_list).read_text().split() if c]
        check_same_classes(data.classes, f"dataset '{spec.name}'", names, class_list)
    mean, std, norm_source = normalisation(data, info, threads)
    model = build_model(arch, data.num_classes, data.channels, data.image_size)
    bn_layers(model, f"architecture '{arch}'")
    try:
        model.load_state_dict(read_checkpoint(checkpoint))
    except RuntimeError as e:
        raise D3SError(f"{checkpoint}: weights do not fit '{arch}' with {data.num_classes} classes and "
                       f"{data.channels} input channels ({str(e).splitlines()[0]} ...): {_first_mismatch(e)}") from None
    model.to(device).eval()
    return _write_teacher(out, model, arch, data, mean, std, {"arch": arch, "pretrained": str(checkpoint),
                          "normalisation": norm_source}, None, {"checkpoint": str(checkpoint)}, device, threads)


def _first_mismatch(e: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln]
    return lines[0] if lines else str(e)


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
    teachers = [load_teacher(p, device) for p in paths]
    first = teachers[0]
    for t in teachers[1:]:
        check_same_classes(first.classes, first.path, t.classes, t.path)
        for key in ("image_size", "channels", "mean", "std"):
            if getattr(t, key) != getattr(first, key):
                raise D3SError(f"{t.path}: {key}={getattr(t, key)} differs from {first.path} ({getattr(first, key)}); "
                               "teachers used together must share the input format")
    return teachers
