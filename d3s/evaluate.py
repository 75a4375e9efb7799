"""Stage 5: train a student from scratch on the distilled images and test it on the real test set.

Soft-label mode replays the stored (epoch, image) views and teacher logits (KL at temperature T);
hard-label mode draws fresh views and uses the assigned labels. The reported number is the
final-epoch accuracy, and the result file records the whole protocol.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from .artifacts import atomic_path, check_same_classes, code_version
from .data import DatasetSpec, load_dataset
from .errors import D3SError
from .hparams import EvalParams
from .models import build_model
from .relabel import SoftLabelStore
from .runtime import generator, log, log_every, progress
from .synthetic import SyntheticSet
from .training import accuracy, cosine_schedule
from .transforms import Normalizer, apply_views, sample_views




def soft_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, t2_scale: bool) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), batch mean; optionally times T^2 (peers use no T^2)."""
    loss = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.log_softmax(teacher_logits / temperature, 1),
                    reduction="batchmean", log_target=True)
    return loss * temperature**2 if t2_scale else loss


def train_student(
    synthetic: SyntheticSet,
    store: SoftLabelStore | None,
    student_arch: str,
    params: EvalParams,
    seed: int,
    device: torch.device,
) -> torch.nn.Module:
    if params.label_mode not in ("soft", "hard"):
        raise D3SError(f"evaluate: label_mode must be 'soft' or 'hard', got {params.label_mode!r}")
    normalizer = Normalizer(synthetic.norm_mean, synthetic.norm_std, device)
    # uint8 on the host; each batch is normalised on the device (a float copy of a large set would not fit)
    images = torch.from_numpy(synthetic.images).permute(0, 3, 1, 2)
    y_all = torch.from_numpy(synthetic.labels)
    n, size = len(images), images.shape[-1]
    torch.manual_seed(seed)
    model = build_model(student_arch, len(synthetic.classes), images.shape[1], size).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    batch = min(params.batch_size, n)
    steps_per_epoch = -(-n // batch)
    schedule = cosine_schedule(optimiser, params.epochs * steps_per_epoch)
    g = generator(seed, 30)
    every = log_every(params.epochs, 10)
    scale = (params.crop_scale_min, params.crop_scale_max)
    for epoch in progress(range(params.epochs), desc="student"):
        if params.label_mode == "soft":
            boxes, flips, logits = store.epoch(epoch)
        else:
            boxes, flips = sample_views(n, scale, synthetic.hflip, g)
        order = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            x = apply_views(normalizer.from_uint8(images[idx]), boxes[idx], flips[idx], size)
            out = model(x)
            if params.label_mode == "soft":
                loss = soft_label_loss(out, logits[idx].to(device), params.temperature, params.t2_scale)
            else:
                loss = F.cross_entropy(out, y_all[idx].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % every == 0:
            log.info("student epoch %d/%d  loss %.4f", epoch + 1, params.epochs, total / n)
    return model


def run_evaluate(
    synthetic: SyntheticSet,
    images_path: str,
    labels_path: str | None,
    spec: DatasetSpec,
    student_arch: str,
    params: EvalParams,
    seed: int,
    out: str,
    device: torch.device,
    threads: int = 0,
    meta: dict | None = None,
) -> dict:
    data = load_dataset(spec)
    workers = data.loader_workers(threads)
    check_same_classes(synthetic.classes, images_path, data.classes, f"dataset '{spec.name}'")
    store = None
    if params.label_mode == "soft":
        if not labels_path:
            raise D3SError("evaluate: label_mode 'soft' needs --labels (the relabel artifact)")
        store = SoftLabelStore(labels_path, synthetic, images_path)
        if params.epochs > store.epochs:
            log.warning("student trains %d epochs on %d label epochs: labels are cycled", params.epochs, store.epochs)
    t0 = time.perf_counter()
    model = train_student(synthetic, store, student_arch, params, seed, device)
    train_seconds = time.perf_counter() - t0
    normalizer = Normalizer(synthetic.norm_mean, synthetic.norm_std, device)
    top1, top5 = accuracy(model, data.test, normalizer, synthetic.images.shape[1], device, workers=workers)
    log.info("student %s seed %d on %d %s images: test top-1 %.2f%%, top-5 %.2f%%",
             student_arch, seed, len(synthetic.labels), synthetic.method, 100 * top1, 100 * top5)
    result = {
        **(meta or {}),
        "method": synthetic.method,
        "ipc": int(synthetic.ipc_range[1] - synthetic.ipc_range[0]),
        "student": student_arch,
        "seed": seed,
        "top1": top1,
        "top5": top5,
        "n_images": int(len(synthetic.labels)),
        "n_test": len(data.test),
        "train_seconds": round(train_seconds, 2),
        "protocol": {
            **asdict(params),
            "optimizer": "AdamW", "schedule": "cosine, per step, to 0", "reported": "final epoch",
            "label_epochs": store.epochs if store else None,
            "relabel": store.config if store else None,
            "distill": synthetic.config,
        },
        "inputs": {"images": images_path, "labels": labels_path, "teachers": synthetic.teachers, "dataset": spec.to_dict()},
        "code_version": code_version(),
    }
    if store:
        store.close()
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
