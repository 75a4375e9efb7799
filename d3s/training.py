"""Supervised training pieces shared by teachers and students: optimiser, schedule, accuracy."""

from __future__ import annotations

import math


import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import Checkpointer, restore_training_state, training_state
from .data import training_sampler
from .hparams import RealTrainingParams
from .runtime import autocast, generator, log, log_every, progress
from .transforms import Normalizer, apply_views, resize, sample_views


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Linear warm-up then cosine decay to zero, stepped once per optimiser step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    normalizer: Normalizer,
    image_size: int,
    device: torch.device,
    batch_size: int = 512,
    workers: int = 0,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (fractions) on a uint8 image dataset, eval mode, no augmentation."""
    model.eval()
    correct1 = correct5 = n = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers):
        x = resize(normalizer.from_uint8(x.to(device)), image_size)
        y = y.to(device)
        logits = model(x)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(1).sum().item()
        n += len(y)
    return correct1 / n, correct5 / n




def train_on_real(
    model: nn.Module,
    train: Dataset,
    normalizer: Normalizer,
    image_size: int,
    crop_scale: tuple[float, float],
    hflip: bool,
    params: RealTrainingParams,
    seed: int,
    device: torch.device,
    workers: int = 0,
    checkpoint: Checkpointer | None = None,
) -> list[float]:
    """Hard-label training on real images with random-resized-crop (+ flip); returns per-epoch loss.

    With a checkpointer, state is saved at epoch ends (every `checkpoint.every` epochs, and on a
    stop signal) and a restart continues from the last saved epoch bit-identically on the CPU.
    """
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=0.9, weight_decay=params.weight_decay, nesterov=True)
    order_rng = generator(seed, 1)
    loader = DataLoader(
        train, batch_size=params.batch_size, sampler=training_sampler(train, order_rng),
        drop_last=len(train) > params.batch_size, num_workers=workers, persistent_workers=workers > 0,
    )
    steps = params.epochs * len(loader)
    schedule = cosine_schedule(optimizer, steps, params.warmup_epochs * len(loader))
    views_rng = generator(seed, 2)
    losses: list[float] = []
    checkpoint = checkpoint or Checkpointer(None, {}, 0)
    start_epoch = 0

    def snapshot(epoch: int) -> dict:
        return training_state(epoch, model, optimizer, schedule, {"order": order_rng, "views": views_rng},
                              losses=torch.tensor(losses, dtype=torch.float64))

    state = checkpoint.load()
    if state is not None:
        start_epoch = restore_training_state(state, model, optimizer, schedule, {"order": order_rng, "views": views_rng})
        losses = state["losses"].tolist()
    every = log_every(steps, 20)  # progress lines by step: one epoch of a large dataset is long
    step = start_epoch * len(loader)
    bar = progress(total=steps, initial=step, desc="teacher")
    for epoch in range(start_epoch, params.epochs):
        total, count = 0.0, 0
        for x, y in loader:
            x = normalizer.from_uint8(x.to(device))
            boxes, flips = sample_views(len(x), crop_scale, hflip, views_rng)
            x = apply_views(x, boxes, flips, image_size)
            with autocast(device, params.precision):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(y)
            count += len(y)
            step += 1
            bar.update(1)
            if step % every == 0 or step == steps:
                log.info("epoch %d/%d  step %d/%d  loss %.4f  lr %.4g", epoch + 1, params.epochs, step, steps,
                         total / count, schedule.get_last_lr()[0])
        losses.append(total / count)
        if checkpoint.due(epoch + 1) and epoch + 1 < params.epochs:
            checkpoint.save(snapshot(epoch + 1))
        checkpoint.maybe_stop(lambda: snapshot(epoch + 1))
    bar.close()
    return losses
