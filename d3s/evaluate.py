"""Stage 5: train a student from scratch on the distilled images and test it on the real test set
(writing a result file, see `artifacts.result`).

Soft-label mode replays the stored (epoch, image) views and teacher logits (KL at temperature T);
hard-label mode draws fresh views and uses the assigned labels. The reported number is the
final-epoch accuracy, and the result file records the whole protocol.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from .artifacts import check_same_classes
from .artifacts.images import SyntheticSet
from .artifacts.labels import SoftLabelStore, images_digest
from .artifacts.result import student_result, write_result
from .artifacts.teacher import Teacher
from .checkpoint import Checkpointer, CheckpointPlan
from .data import ImagesOnDevice, batches_per_epoch, load_dataset
from .dataset_spec import DatasetSpec
from .distributed import ranks
from .engine import Trainer, run_epochs
from .errors import D3SError
from .hparams import EvalParams
from .models import build_model
from .runtime import autocast, generator, log, prepare_input, prepare_model, to_device
from .training import accuracy, cosine_schedule, fit_on_real
from .transforms import Normalizer, apply_views, sample_views


def soft_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, t2_scale: bool
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)), batch mean; optionally times T^2 (peers use no T^2)."""
    loss = F.kl_div(
        F.log_softmax(student_logits / temperature, 1),
        F.log_softmax(teacher_logits / temperature, 1),
        reduction="batchmean",
        log_target=True,
    )
    return loss * temperature**2 if t2_scale else loss


def train_student(
    synthetic: SyntheticSet,
    store: SoftLabelStore | None,
    student_arch: str,
    params: EvalParams,
    seed: int,
    device: torch.device,
    checkpoint: Checkpointer | None = None,
) -> torch.nn.Module:
    """Train a student on the distilled set: soft labels replayed from `store`, or hard labels.

    The set (uint8, see ImagesOnDevice) and each epoch's labels, views and order go to the
    device once; a step only indexes them there, so nothing is copied or read back per step.
    """
    if params.label_mode not in ("soft", "hard"):
        raise D3SError(f"evaluate: label_mode must be 'soft' or 'hard', got {params.label_mode!r}")
    r = ranks()
    normalizer = Normalizer(synthetic.norm_mean, synthetic.norm_std, device)
    images = ImagesOnDevice(torch.from_numpy(synthetic.images).permute(0, 3, 1, 2), device)
    y_all = to_device(torch.from_numpy(synthetic.labels), device)
    n, size = len(images), images.shape[-1]
    torch.manual_seed(seed)
    model = build_model(student_arch, len(synthetic.classes), images.shape[1], size).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    batch = min(params.batch_size, n)
    steps_per_epoch = -(-n // batch)
    trainer = Trainer(
        model, optimiser, cosine_schedule(optimiser, params.epochs * steps_per_epoch), device, params.precision
    )
    g = generator(seed, 30)
    scale = (params.crop_scale_min, params.crop_scale_max)

    def epoch_steps(epoch: int):
        if params.label_mode == "soft":
            boxes, flips, logits = store.epoch(epoch)
            boxes, flips, logits = to_device(boxes, device), to_device(flips, device), logits.to(device)
        else:
            boxes, flips = sample_views(n, scale, synthetic.hflip, g, device)
        order_host = torch.randperm(n, generator=g)
        order = to_device(order_host, device)
        image_order = order if images.index_device == device else order_host
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            part = r.share(len(idx))
            share = idx[part]
            if len(share) == 0:  # a tail batch smaller than the ranks: an empty forward joins DDP's average
                out = trainer.forward(torch.zeros((0, images.shape[1], size, size), device=device))
                loss = out.float().sum()
            else:
                pixels = images.take(image_order[start : start + batch][part])
                x = apply_views(normalizer.from_uint8(pixels), boxes[share], flips[share], size)
                out = trainer.forward(x).float()
                if params.label_mode == "soft":
                    loss = soft_label_loss(out, logits[share], params.temperature, params.t2_scale)
                else:
                    loss = F.cross_entropy(out, y_all[share])
            trainer.step(loss * r.loss_scale(len(share), len(idx)))  # exactly 1.0 with one process
            yield loss, len(share)

    generators = {"g": g}
    run_epochs(
        "student",
        params.epochs,
        steps_per_epoch,
        epoch_steps,
        device,
        checkpoint,
        snapshot=lambda epoch: trainer.state(epoch, generators),
        restore=lambda state: trainer.restore(state, generators),
        log_lines=10,
    )
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
    checkpoints: CheckpointPlan = CheckpointPlan(),
) -> dict:
    data = load_dataset(spec, splits=("val", "test"))  # a student of distilled images never sees the training set
    check_same_classes(synthetic.classes, images_path, data.classes, f"dataset '{spec.name}'")
    if data.image_size != synthetic.images.shape[1] or data.channels != synthetic.images.shape[3]:
        raise D3SError(
            f"{images_path}: images are {synthetic.images.shape[1]} px x {synthetic.images.shape[3]} channels, "
            f"dataset '{spec.name}' gives {data.image_size} px x {data.channels}: the student would be tested "
            "on another input format"
        )
    store = None
    if params.label_mode == "soft":
        if not labels_path:
            raise D3SError("evaluate: label_mode 'soft' needs --labels (the relabel artifact)")
        store = SoftLabelStore(labels_path, synthetic, images_path)
        if params.epochs > store.epochs:
            log.warning("student trains %d epochs on %d label epochs: labels are cycled", params.epochs, store.epochs)
    checkpoint = checkpoints.checkpointer(
        {
            "stage": "evaluate",
            "student": student_arch,
            "params": asdict(params),
            "seed": seed,
            "classes": synthetic.classes,
            "images": images_digest(synthetic.images),
            "labels": {**store.config, **store.identity} if store else None,
        }
    )
    t0 = time.perf_counter()
    try:
        model = train_student(synthetic, store, student_arch, params, seed, device, checkpoint)
    except BaseException:
        if store:
            store.close()
        raise
    train_seconds = time.perf_counter() - t0
    normalizer = Normalizer(synthetic.norm_mean, synthetic.norm_std, device)
    protocol = {
        **asdict(params),
        "label_epochs": store.epochs if store else None,
        "relabel": store.config if store else None,
        "distill": synthetic.config,
    }
    if store:
        store.close()
    result = _write_result(
        model,
        data,
        normalizer,
        out,
        device,
        threads,
        meta,
        method=synthetic.method,
        ipc=int(synthetic.ipc_range[1] - synthetic.ipc_range[0]),
        student=student_arch,
        seed=seed,
        n_images=len(synthetic.labels),
        train_seconds=train_seconds,
        protocol=protocol,
        inputs={
            "images": images_path,
            "labels": labels_path,
            "teachers": synthetic.teachers,
            "dataset": spec.to_dict(),
        },
    )
    checkpoint.clear()
    return result


def run_evaluate_full(
    teachers: list[Teacher],
    spec: DatasetSpec,
    student_arch: str,
    params: EvalParams,
    seed: int,
    out: str,
    device: torch.device,
    threads: int = 0,
    meta: dict | None = None,
    checkpoints: CheckpointPlan = CheckpointPlan(),
) -> dict:
    """The upper bound: a student trained on the whole real training set, teacher soft labels online (or hard)."""
    data = load_dataset(spec, splits=("train", "val", "test"))
    t0 = teachers[0]
    check_same_classes(t0.classes, t0.path, data.classes, f"dataset '{spec.name}'")
    normalizer = t0.normalizer(device)
    checkpoint = checkpoints.checkpointer(
        {
            "stage": "evaluate-full",
            "student": student_arch,
            "params": asdict(params),
            "seed": seed,
            "classes": data.classes,
            "teachers": [t.weights_sha256 for t in teachers],
            "dataset": spec.to_dict(),
        }
    )
    torch.manual_seed(seed)
    model = build_model(student_arch, data.num_classes, data.channels, data.image_size).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps = params.full_epochs * batches_per_epoch(len(data.train), params.batch_size)
    trainer = Trainer(model, optimiser, cosine_schedule(optimiser, steps), device, params.precision)
    teacher_models = [prepare_model(t.model, device) for t in teachers]

    def loss_fn(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if params.label_mode != "soft":
            return F.cross_entropy(logits.float(), y)
        with torch.no_grad(), autocast(device, params.precision):
            target = torch.stack([m(prepare_input(x)) for m in teacher_models]).mean(0).float()
        return soft_label_loss(logits.float(), target, params.temperature, params.t2_scale)

    # Batch order and views from separate streams: a shared one would depend on how far loader
    # workers read ahead (the sampler draws its next permutation early), so on --threads.
    generators = {"order": generator(seed, 31), "views": generator(seed, 32)}
    started = time.perf_counter()
    fit_on_real(
        "full-data student",
        trainer,
        data.train,
        normalizer,
        data.image_size,
        (params.crop_scale_min, params.crop_scale_max),
        t0.hflip,
        params.batch_size,
        params.full_epochs,
        loss_fn,
        generators,
        data.loader_workers(threads),
        checkpoint,
    )
    protocol = {
        **asdict(params),
        "epochs": params.full_epochs,
        "soft_labels": "teachers online" if params.label_mode == "soft" else None,
    }
    result = _write_result(
        model,
        data,
        normalizer,
        out,
        device,
        threads,
        meta,
        method="full",
        ipc=None,
        student=student_arch,
        seed=seed,
        n_images=len(data.train),
        train_seconds=time.perf_counter() - started,
        protocol=protocol,
        inputs={"teachers": [t.weights_sha256 for t in teachers], "dataset": spec.to_dict()},
    )
    checkpoint.clear()
    return result


def _write_result(
    model,
    data,
    normalizer,
    out,
    device,
    threads,
    meta,
    *,
    method,
    ipc,
    student,
    seed,
    n_images,
    train_seconds,
    protocol,
    inputs,
) -> dict:
    """Test a trained student on the validation split (when the dataset has one) and the real test
    set, and write the result JSON (atomically). Only `val_top1` may choose settings (sweeps)."""
    workers = data.loader_workers(threads)
    val_top1 = None
    if data.val is not None:
        val_top1, _ = accuracy(model, data.val, normalizer, data.image_size, device, workers=workers)
    top1, top5 = accuracy(model, data.test, normalizer, data.image_size, device, workers=workers)
    log.info(
        "student %s seed %d on %d %s images: test top-1 %.2f%%, top-5 %.2f%%%s",
        student,
        seed,
        n_images,
        method,
        100 * top1,
        100 * top5,
        "" if val_top1 is None else f", validation top-1 {100 * val_top1:.2f}%",
    )
    result = student_result(
        meta=meta,
        method=method,
        ipc=ipc,
        student=student,
        seed=seed,
        top1=top1,
        top5=top5,
        val_top1=val_top1,
        n_val=len(data.val) if data.val is not None else 0,
        n_images=n_images,
        n_test=len(data.test),
        train_seconds=train_seconds,
        inputs=inputs,
        protocol={
            "optimizer": "AdamW",
            "schedule": "cosine, per step, to 0",
            "reported": "final epoch",
            **protocol,
            **({"eval_resize": data.eval_resize} if data.eval_resize else {}),
        },
    )
    if ranks().main:
        write_result(out, result)
    return result
