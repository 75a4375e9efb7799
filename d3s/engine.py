"""The one epoch/step engine of every training-like stage: teacher, student, full-data student, relabel.

    run_epochs(...)  epochs of steps -> device-side loss sums -> a log line every so many steps
                     -> a checkpoint at epoch ends (every N epochs or M minutes, or on a stop signal)

A step never reads a value back from the device: its loss is added to per-epoch sums that
stay there, and non-finite losses are caught by a device-side flag. Both are read only when a
log line is due, which is the loop's one host-device sync. `Trainer` holds what a training
step needs: the model (DDP-wrapped with several processes), its optimiser and per-step
schedule, the precision and the memory format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from .checkpoint import Checkpointer, restore_training_state, stop_requested, training_state
from .distributed import agree, all_min, all_sum, ranks, wrap
from .errors import D3SError
from .runtime import SPEED, autocast, log, log_every, maybe_compile, prepare_input, prepare_model, progress

CLEAN = 2**53  # "no non-finite loss yet": larger than any step, exact in float64


class LossMeter:
    """Per-epoch sums of loss x batch size and batch sizes, on the device; read at log intervals only."""

    def __init__(self, epochs: int, device: torch.device):
        self.sums = torch.zeros(2, epochs, dtype=torch.float64, device=device)  # [loss x n, n]
        self.first_bad = torch.full((), CLEAN, dtype=torch.int64, device=device)  # first step with a non-finite loss

    def add(self, epoch: int, step: int, loss: torch.Tensor, n: int) -> None:
        loss = loss.detach().double()
        self.sums[0, epoch] += loss * n
        self.sums[1, epoch] += n
        self.first_bad = torch.where(~torch.isfinite(loss), self.first_bad.clamp(max=step), self.first_bad)

    def read(self) -> tuple[torch.Tensor, int]:
        """(per-epoch [sum, count] over all ranks, first non-finite step or -1): the loop's one sync."""
        sums, bad = all_sum(self.sums.clone()), all_min(self.first_bad.clone())
        host = torch.cat([sums.flatten(), bad.double()[None]]).cpu()
        return host[:-1].view(2, -1), (int(host[-1]) if host[-1] < CLEAN else -1)

    def state_dict(self) -> dict:
        """The sums over all ranks (a collective), for a checkpoint."""
        sums, _ = self.read()
        return {"sums": sums}

    def load_state_dict(self, state: dict) -> None:
        """Rank 0 carries the saved sums on; the other ranks' shares start at zero."""
        if ranks().main:
            self.sums.copy_(state["sums"])


class Trainer:
    """A model in training: forward in the run's precision and memory format, one optimiser step."""

    def __init__(
        self,
        model: nn.Module,
        optimiser: torch.optim.Optimizer,
        schedule,
        device: torch.device,
        precision: str = "fp32",
    ):
        self.model = model
        self.optimiser, self.schedule = optimiser, schedule
        self.device, self.precision = device, precision
        module = wrap(prepare_model(model, device), device)
        if ranks().world > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            self.module = module  # dynamo breaks its graph at every SyncBatchNorm (pytorch#161302)
            if SPEED.compile:
                log.warning("compile: skipped for a BatchNorm model on several processes (SyncBatchNorm)")
        else:
            self.module = maybe_compile(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.module(prepare_input(x))

    def step(self, loss: torch.Tensor) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        self.optimiser.step()
        self.schedule.step()

    def lr(self) -> float:
        return self.schedule.get_last_lr()[0]

    def state(self, epoch: int, generators: dict[str, torch.Generator], **extra) -> dict:
        return training_state(epoch, self.model, self.optimiser, self.schedule, generators, **extra)

    def restore(self, state: dict, generators: dict[str, torch.Generator]) -> int:
        return restore_training_state(state, self.model, self.optimiser, self.schedule, generators)


def run_epochs(
    name: str,
    epochs: int,
    steps_per_epoch: int,
    epoch_steps: Callable[[int], Iterator[tuple[torch.Tensor, int] | None]],
    device: torch.device,
    checkpoint: Checkpointer | None = None,
    snapshot: Callable[[int], dict] | None = None,
    restore: Callable[[dict], int] | None = None,
    log_lines: int = 20,
    describe: Callable[[], str] = lambda: "",
) -> list[float]:
    """Run epochs `start..epochs-1` of `epoch_steps(epoch)`, which yields (mean loss, batch size) per step
    (or None for steps without a loss); returns the per-epoch mean losses.

    `snapshot(epoch)` is the state after `epoch` epochs, `restore(state)` loads it and returns the
    epoch to continue from; a checkpointer without a directory keeps nothing.
    """
    checkpoint = checkpoint or Checkpointer(None, {}, 0, 0)
    meter = LossMeter(epochs, device)
    start = 0
    state = checkpoint.load()
    if state is not None and restore is not None:
        start = restore(state)
        meter.load_state_dict(state["meter"])

    def saved(epoch: int) -> dict:
        return {**snapshot(epoch), "meter": meter.state_dict()}

    total = epochs * steps_per_epoch
    every = log_every(total, log_lines)
    step = start * steps_per_epoch
    bar = progress(total=total, initial=step, desc=name, disable=None if ranks().main else True)
    for epoch in range(start, epochs):
        for out in epoch_steps(epoch):
            if out is not None:
                meter.add(epoch, step, *out)
            step += 1
            bar.update(1)
            if step % every == 0 or step == total:
                _log_progress(name, meter, epoch, epochs, step, total, describe())
        if snapshot is not None:
            # one decision for all ranks: each has its own clock, and a signal may reach some only;
            # none after the last epoch (the artifact is written next: a stop would only cost a retry)
            more = epoch + 1 < epochs
            due, stop = agree([more and checkpoint.due(epoch + 1), more and stop_requested()], device)
            if due or stop:
                _check_finite(name, meter)  # never checkpoint a diverged state
                state = saved(epoch + 1)
                if stop:
                    checkpoint.preempt(state)
                checkpoint.save(state)
    bar.close()
    sums, _ = _check_finite(name, meter)
    return (sums[0] / sums[1].clamp_min(1)).tolist()


def _check_finite(name: str, meter: LossMeter):
    sums, bad = meter.read()
    if bad >= 0:
        raise D3SError(
            f"{name}: the loss is not finite at step {bad + 1}; try a smaller learning rate, or fp32 instead of bf16"
        )
    return sums, bad


def _log_progress(name, meter, epoch, epochs, step, total, extra) -> None:
    sums, _ = _check_finite(name, meter)
    count = float(sums[1, epoch])
    loss = f"  loss {float(sums[0, epoch]) / count:.4f}" if count else ""
    log.info(
        "%s epoch %d/%d  step %d/%d%s%s", name, epoch + 1, epochs, step, total, loss, f"  {extra}" if extra else ""
    )
