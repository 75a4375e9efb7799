"""Resumable long stages: periodic checkpoints in a sidecar directory, and a clean stop on SIGTERM.

A checkpoint lives outside the stage's declared output (Snakemake deletes a failed job's
outputs), is written atomically, and carries a fingerprint of what produced it: configuration,
inputs, class order, seed and code version. A stage restarted with the same fingerprint
continues from the checkpoint; with a different one it logs why and starts over. The
directory is removed once the final artifact is written.

SLURM sends SIGTERM (or a chosen signal such as SIGUSR1) before a time limit or preemption:
the stage then saves a checkpoint at the end of its current step and exits with code 75
(EX_TEMPFAIL), so that Snakemake's --retries or a SLURM requeue runs it again and it resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch

from .artifacts import code_version
from .runtime import log

EXIT_PREEMPTED = 75
_stop_signal: list[int] = []


class Preempted(Exception):
    """Raised after a checkpoint was saved because a stop signal arrived."""


def install_stop_handlers(signals=(signal.SIGTERM, signal.SIGUSR1)) -> None:
    """Remember a stop request instead of dying mid-step; the training loop checks `stop_requested`."""

    def handler(signum, _frame):
        if _stop_signal:  # a second signal: stop now, as without the handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        log.warning("received %s: will checkpoint after the current step and exit", signal.Signals(signum).name)
        _stop_signal.append(signum)

    for s in signals:
        signal.signal(s, handler)


def stop_requested() -> bool:
    return bool(_stop_signal)


class Checkpointer:
    """Save/load one stage's state in `directory`; a no-op when directory is None."""

    def __init__(self, directory: str | os.PathLike | None, fingerprint: dict[str, Any], every: int):
        self.dir = Path(directory) if directory else None
        self.fingerprint = json.loads(json.dumps({**fingerprint, "code_version": code_version()}, sort_keys=True, default=str))
        self.every = max(0, int(every))

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def due(self, step: int) -> bool:
        """After `step` completed steps (1-based count), is a periodic checkpoint due?"""
        return self.enabled and self.every > 0 and step % self.every == 0

    def load(self) -> dict[str, Any] | None:
        if not self.enabled or not (self.dir / "state.pt").exists():
            return None
        try:
            found = json.loads((self.dir / "fingerprint.json").read_text())
        except (OSError, json.JSONDecodeError):
            found = None
        if found != self.fingerprint:
            diff = sorted(k for k in set(self.fingerprint) | set(found or {}) if (found or {}).get(k) != self.fingerprint.get(k))
            log.warning("checkpoint in %s was made with a different %s: starting over", self.dir, ", ".join(diff) or "format")
            self.clear()
            return None
        state = torch.load(self.dir / "state.pt", map_location="cpu", weights_only=True)
        log.info("resuming from %s at step %d", self.dir, state["step"])
        return state

    def save(self, state: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".state.pt.tmp-{os.getpid()}"
        torch.save(state, tmp)
        (self.dir / "fingerprint.json").write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))
        os.replace(tmp, self.dir / "state.pt")
        log.info("checkpoint saved at step %d in %s", state["step"], self.dir)

    def maybe_stop(self, state_fn) -> None:
        """If a stop signal arrived: save `state_fn()` and raise Preempted."""
        if stop_requested():
            state = state_fn()
            self.save(state)
            where = f"checkpoint in {self.dir}" if self.enabled else "no --resume-dir, so nothing was kept"
            raise Preempted(f"stopped by signal {_stop_signal[0]} after step {state['step']}; {where}")

    def clear(self) -> None:
        if self.enabled and self.dir.exists():
            shutil.rmtree(self.dir)


def training_state(step: int, model, optimiser, schedule, generators: dict[str, torch.Generator], **extra) -> dict:
    """The state of a model-training loop after `step` epochs: weights, optimiser, schedule, every RNG."""
    return {"step": step, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
            "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
            "generators": {name: g.get_state() for name, g in generators.items()}, **extra}


def restore_training_state(state: dict, model, optimiser, schedule, generators: dict[str, torch.Generator]) -> int:
    """Load what `training_state` saved into the live objects; returns the epoch to continue from."""
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    return int(state["step"])
