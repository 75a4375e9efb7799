"""Supervised training on real images (teachers, the full-data student), its schedule, and accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .checkpoint import Checkpointer
from .data import evaluation_loader, training_loader
from .distributed import all_sum, ranks
from .engine import Trainer, run_epochs
from .runtime import prepare_input, prepare_model, to_device
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
    """Top-1 and top-5 accuracy (fractions) on a uint8 image dataset, eval mode, no augmentation.

    Counts stay on the device until the end (one read-back); with several processes each rank
    tests every world-th image and the counts are summed.
    """
    model = prepare_model(model, device).eval()
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # top-1, top-5
    for x, y in evaluation_loader(dataset, batch_size, workers, device, ranks()):
        x = resize(normalizer.from_uint8(to_device(x, device)), image_size)
        y = to_device(y, device)
        logits = model(prepare_input(x))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        counts += torch.stack([(top[:, 0] == y).sum(), (top == y[:, None]).any(1).sum()])
    correct1, correct5 = all_sum(counts).tolist()
    return correct1 / len(dataset), correct5 / len(dataset)


def fit_on_real(
    name: str,
    trainer: Trainer,
    train: Dataset,
    normalizer: Normalizer,
    image_size: int,
    crop_scale: tuple[float, float],
    hflip: bool,
    batch_size: int,
    epochs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    generators: dict[str, torch.Generator],
    workers: int = 0,
    checkpoint: Checkpointer | None = None,
) -> list[float]:
    """Train on real images with random-resized-crop (+ flip) views; returns per-epoch mean losses.

    `generators` has 'order' (batch order) and 'views' (may be the same generator).
    `loss_fn(logits, views, labels)` is the step's mean loss over this rank's share.
    Every rank draws the views of the whole global batch and takes its share, so N processes
    see the 1-process run's batches. With a checkpointer, state is saved at epoch ends and a
    restart continues from the last saved epoch bit-identically on the CPU.
    """
    r = ranks()
    trainer.model.train()
    loader = training_loader(train, batch_size, generators["order"], workers, trainer.device, r)
    if trainer.schedule is None:
        raise ValueError("fit_on_real: the trainer needs a schedule")

    n_global = min(batch_size, len(train))  # full batches only, or the whole set when it is smaller

    def epoch_steps(epoch: int):
        for x, y in loader:
            boxes, flips = sample_views(n_global, crop_scale, hflip, generators["views"], trainer.device)
            share = r.share(n_global)
            x = apply_views(normalizer.from_uint8(to_device(x, trainer.device)), boxes[share], flips[share], image_size)
            loss = loss_fn(trainer.forward(x), x, to_device(y, trainer.device))
            trainer.step(loss * r.loss_scale(len(y), n_global))  # exactly 1.0 with one process
            yield loss, len(y)

    return run_epochs(
        name,
        epochs,
        len(loader),
        epoch_steps,
        trainer.device,
        checkpoint,
        snapshot=lambda epoch: trainer.state(epoch, generators),
        restore=lambda state: trainer.restore(state, generators),
        describe=lambda: f"lr {trainer.lr():.4g}",
    )
