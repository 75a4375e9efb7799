"""Resumable long stages: periodic checkpoints in a sidecar directory, and a clean stop on SIGTERM.

A checkpoint lives outside the stage's declared output (Snakemake deletes a failed job's
outputs), is written atomically, and carries a fingerprint of what produced it: configuration,
inputs, class order, seed and code version. A stage restarted with the same fingerprint
continues from the checkpoint; with a different one it logs why and starts over. The
directory is removed once the final artifact is written.

A stop request is SIGTERM (what SLURM sends at a time limit or preemption, KillWait seconds
before SIGKILL), SIGUSR1, or SIGURG: the warning the cluster profile asks SLURM for ahead of
the time limit (`--signal=URG@<seconds>`). SLURM delivers that warning to every process of
the job's steps: under the executor plugin that is the job's own `python -m snakemake` and
torchrun as well as d3s (the rules `exec` d3s: no shell between). SIGURG is ignored by
default, so those stay alive and wait, while SIGUSR1 would kill them (its default action) and
the step with them, d3s mid-checkpoint.
The stage then saves a checkpoint at its next safe point (the end of the current distillation
step, or of the current epoch of a training loop) and exits with code 75 (EX_TEMPFAIL), so
that Snakemake's --retries or a SLURM requeue runs it again and it resumes. Under torchrun
every rank stops after the same epoch and torchrun exits 1 (Snakemake retries either).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .artifacts import code_version
from .errors import Preempted
from .runtime import log

_stop_signal: list[int] = []


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGURG)


def install_stop_handlers(signals=STOP_SIGNALS) -> None:
    """Remember a stop request instead of dying mid-step; the loops check `stop_requested` at
    their safe points (each distillation step; each epoch end of the training loops)."""
    first_at: list[float] = []

    def handler(signum, _frame):
        if _stop_signal:
            # Under torchrun a time limit reaches a rank twice (SLURM signals every process, and
            # torchrun forwards its own): a repeat within a few seconds is that, not "stop now".
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and time.monotonic() - first_at[0] < REPEAT_SECONDS:
                return
            signal.signal(signum, signal.SIG_DFL)  # a second signal: stop now, as without the handler
            os.kill(os.getpid(), signum)
        log.warning("received %s: will checkpoint at the next safe point and exit", signal.Signals(signum).name)
        _stop_signal.append(signum)
        first_at.append(time.monotonic())

    for s in signals:
        signal.signal(s, handler)


REPEAT_SECONDS = 5.0


def stop_requested() -> bool:
    return bool(_stop_signal)


DEFAULT_MINUTES = 15.0
STOP_FILE = "stopped.json"  # which signal stopped the run that saved the checkpoint beside it


@dataclass(frozen=True)
class CheckpointPlan:
    """Where and how often a stage checkpoints: the --resume-dir, --checkpoint-every and
    --checkpoint-minutes of its command (no directory: never)."""

    directory: str | None = None
    every: int = 0
    minutes: float = DEFAULT_MINUTES

    def checkpointer(self, fingerprint: dict[str, Any], every: int | None = None) -> Checkpointer:
        """The stage's Checkpointer for a run described by `fingerprint` (`every`: this stage's own count)."""
        return Checkpointer(self.directory, fingerprint, self.every if every is None else every, self.minutes)

    def for_seed(self, seed: int) -> CheckpointPlan:
        """The plan of one of several students a job trains one after another: a folder each."""
        return replace(self, directory=os.path.join(self.directory, f"seed{seed}")) if self.directory else self


class Checkpointer:
    """Save/load one stage's state in `directory`; a no-op when directory is None.

    A checkpoint is due every `every` steps (or epochs; 0: never by count) and every `minutes`
    of wall time (0: never by time): by count alone, "every 500 steps" of an ImageNet shard
    would write gigabytes every few seconds on a fast GPU, or far too rarely on a slow one.
    With several processes only rank 0 writes; every rank reads.
    """

    def __init__(
        self,
        directory: str | os.PathLike | None,
        fingerprint: dict[str, Any],
        every: int,
        minutes: float = DEFAULT_MINUTES,
        clock=time.monotonic,
    ):
        self.dir = Path(directory) if directory else None
        self.fingerprint = json.loads(
            json.dumps({**fingerprint, "code_version": code_version()}, sort_keys=True, default=str)
        )
        self.every = max(0, int(every))
        self.minutes = max(0.0, float(minutes))
        self._clock = clock
        self._last = clock()

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def due(self, step: int) -> bool:
        """After `step` completed steps (1-based count), is a checkpoint due (by count or by time)?"""
        if not self.enabled:
            return False
        by_count = self.every > 0 and step % self.every == 0
        by_time = self.minutes > 0 and self._clock() - self._last >= 60 * self.minutes
        return by_count or by_time

    def load(self) -> dict[str, Any] | None:
        if not self.enabled or not (self.dir / "state.pt").exists():
            return None
        try:
            found = json.loads((self.dir / "fingerprint.json").read_text())
        except (OSError, json.JSONDecodeError):
            found = None
        if found != self.fingerprint:
            diff = sorted(
                k for k in set(self.fingerprint) | set(found or {}) if (found or {}).get(k) != self.fingerprint.get(k)
            )
            log.warning(
                "checkpoint in %s was made with a different %s: starting over", self.dir, ", ".join(diff) or "format"
            )
            self.clear()
            return None
        state = torch.load(self.dir / "state.pt", map_location="cpu", weights_only=True)
        log.info("resuming from %s at step %d%s", self.dir, state["step"], self._stop_note(state["step"]))
        return state

    def _stop_note(self, step: int) -> str:
        """Why the previous run stopped, when it stopped on a signal at this checkpoint (the log
        of a retried job is overwritten, so the resumed run says it)."""
        try:
            stop = json.loads((self.dir / STOP_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            return ""
        return f" (the previous run stopped on {stop['signal']})" if stop.get("step") == step else ""

    def save(self, state: dict[str, Any]) -> None:
        self._last = self._clock()
        if not self.enabled or _rank() != 0:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".state.pt.tmp-{os.getpid()}"
        torch.save(state, tmp)
        (self.dir / "fingerprint.json").write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))
        os.replace(tmp, self.dir / "state.pt")
        size = (self.dir / "state.pt").stat().st_size
        log.info("checkpoint saved at step %d in %s (%.1f MB)", state["step"], self.dir, size / 1e6)

    def at_safe_point(self, step: int, last: int, make_state) -> None:
        """A loop's safe point after `step` of `last` steps: on a stop request save `make_state()`
        and raise Preempted, else save it when a checkpoint is due. Nothing after the last step:
        the artifact is written next (a stop there would only cost a retry)."""
        if step >= last:
            return
        stop = stop_requested()
        if stop or self.due(step):
            state = make_state()
            if stop:
                self.preempt(state)
            self.save(state)

    def preempt(self, state: dict[str, Any]) -> None:
        """Save `state`, wait until rank 0 has written it (several processes), raise Preempted."""
        from .distributed import barrier

        self.save(state)
        name = signal.Signals(_stop_signal[0]).name if _stop_signal else "a signal on another rank"
        if self.enabled and _rank() == 0:
            (self.dir / STOP_FILE).write_text(json.dumps({"signal": name, "step": state["step"]}))
        barrier()  # ranks that exit early would make torchrun kill rank 0 mid-write
        where = f"checkpoint in {self.dir}" if self.enabled else "no --resume-dir, so nothing was kept"
        raise Preempted(f"stopped by {name} after step {state['step']}; {where}")

    def clear(self) -> None:
        if self.enabled and self.dir.exists() and _rank() == 0:
            shutil.rmtree(self.dir)


def _rank() -> int:
    from .distributed import ranks

    return ranks().rank


def training_state(step: int, model, optimiser, schedule, generators: dict[str, torch.Generator], **extra) -> dict:
    """The state of a model-training loop after `step` epochs: weights, optimiser, schedule, every RNG."""
    return {
        "step": step,
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": schedule.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
        **extra,
    }


def restore_training_state(state: dict, model, optimiser, schedule, generators: dict[str, torch.Generator]) -> int:
    """Load what `training_state` saved into the live objects; returns the epoch to continue from."""
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    return int(state["step"])
