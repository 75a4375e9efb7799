"""Stage 1: train a teacher on the real training set, or import pretrained weights, and store it as a
teacher artifact (the format: `artifacts.teacher`).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import check_same_classes
from .artifacts.teacher import read_checkpoint, save_teacher, weights_digest
from .checkpoint import CheckpointPlan
from .data import LoadedDataset, batches_per_epoch, channel_moments, load_dataset
from .dataset_info import read_dataset_info
from .dataset_spec import DatasetSpec
from .distributed import ranks
from .engine import Trainer
from .errors import D3SError
from .hparams import RealTrainingParams
from .models import bn_layers, build_model
from .runtime import generator, log
from .training import accuracy, cosine_schedule, fit_on_real
from .transforms import Normalizer


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
        raise D3SError(
            f"dataset '{spec.name}': mean/std have {len(mean)}/{len(std)} values, images have {data.channels} channels"
        )
    log.info("normalisation (%s): mean %s std %s", source, np.round(mean, 4).tolist(), np.round(std, 4).tolist())
    return mean, std, source


def _write_teacher(
    out,
    model,
    arch,
    data: LoadedDataset,
    mean,
    std,
    config: dict,
    seed: int | None,
    inputs: dict,
    device,
    threads: int,
    losses=(),
) -> dict:
    """Test the model on the dataset's test split and store it as a teacher artifact."""
    normalizer = Normalizer(mean, std, device)
    top1, top5 = accuracy(model, data.test, normalizer, data.image_size, device, workers=data.loader_workers(threads))
    log.info("teacher %s: test top-1 %.2f%%, top-5 %.2f%% on %d images", arch, 100 * top1, 100 * top5, len(data.test))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    digest = weights_digest(state)
    if ranks().main:
        save_teacher(
            out,
            state,
            arch=arch,
            classes=data.classes,
            channels=data.channels,
            image_size=data.image_size,
            mean=mean,
            std=std,
            hflip=data.spec.hflip,
            dataset=data.spec.to_dict(),
            test_top1=top1,
            test_top5=top5,
            weights_sha256=digest,
            n_train=len(data.train),
            n_test=len(data.test),
            config=config,
            seed=seed,
            inputs=inputs,
            losses=losses,
        )
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
    checkpoints: CheckpointPlan = CheckpointPlan(),
) -> dict:
    data = load_dataset(spec)
    mean, std, norm_source = normalisation(data, info, threads)
    checkpoint = checkpoints.checkpointer(
        {
            "stage": "train-teacher",
            "arch": arch,
            "params": asdict(params),
            "seed": seed,
            "dataset": spec.to_dict(),
            "classes": data.classes,
            "mean": mean,
            "std": std,
        }
    )
    torch.manual_seed(seed)
    model = build_model(arch, data.num_classes, data.channels, data.image_size)
    bn_layers(model, f"architecture '{arch}'")
    log.info(
        "training %s (%d parameters) on %d images of '%s', %d classes, %dpx",
        arch,
        sum(p.numel() for p in model.parameters()),
        len(data.train),
        spec.name,
        data.num_classes,
        data.image_size,
    )
    model.to(device)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=params.lr, momentum=0.9, weight_decay=params.weight_decay, nesterov=True
    )
    steps_per_epoch = batches_per_epoch(len(data.train), params.batch_size)
    schedule = cosine_schedule(optimiser, params.epochs * steps_per_epoch, params.warmup_epochs * steps_per_epoch)
    trainer = Trainer(model, optimiser, schedule, device, params.precision)
    losses = fit_on_real(
        "teacher",
        trainer,
        data.train,
        Normalizer(mean, std, device),
        data.image_size,
        spec.crop_scale,
        spec.hflip,
        params.batch_size,
        params.epochs,
        lambda logits, _x, y: F.cross_entropy(logits.float(), y),
        {"order": generator(seed, 1), "views": generator(seed, 2)},
        data.loader_workers(threads),
        checkpoint,
    )
    result = _write_teacher(
        out,
        model,
        arch,
        data,
        mean,
        std,
        {"arch": arch, "normalisation": norm_source, **asdict(params)},
        seed,
        {},
        device,
        threads,
        losses,
    )
    checkpoint.clear()
    return result


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
        raise D3SError(
            f"{checkpoint}: weights do not fit '{arch}' with {data.num_classes} classes and "
            f"{data.channels} input channels ({str(e).splitlines()[0]} ...): {_first_mismatch(e)}"
        ) from None
    model.to(device).eval()
    return _write_teacher(
        out,
        model,
        arch,
        data,
        mean,
        std,
        {"arch": arch, "pretrained": str(checkpoint), "normalisation": norm_source},
        None,
        {"checkpoint": str(checkpoint)},
        device,
        threads,
    )


def _first_mismatch(e: RuntimeError) -> str:
    lines = [
        ln.strip()
        for ln in str(e).splitlines()
        if "size mismatch" in ln or "Missing key" in ln or "Unexpected key" in ln
    ]
    return lines[0] if lines else str(e)
