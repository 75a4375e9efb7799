"""Where and how a stage runs: device choice, CPU threads, seeding and progress output."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import D3SError

log = logging.getLogger("d3s")


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present (honouring CUDA_VISIBLE_DEVICES, as SLURM sets it), else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise D3SError(f"--device {name}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    return device


def autocast(device: torch.device, precision: str):
    """The forward-pass precision context of teacher and student training: fp32, or bf16 autocast.

    Statistics and synthesis always run in fp32 (their float64 moments need exact inputs).
    """
    if precision not in ("fp32", "bf16"):
        raise D3SError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def configure(threads: int | None, seed: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)


def generator(seed: int, *salt: int) -> torch.Generator:
    """A CPU generator for a (seed, salt...) stream: independent of call order elsewhere."""
    g = torch.Generator()
    g.manual_seed(hash((int(seed),) + tuple(int(s) for s in salt)) % (2**63))
    return g


def progress(iterable=None, total=None, desc: str = "", **kwargs):
    """A progress bar on a terminal; periodic log lines (see `log_every`) cover log files."""
    return tqdm(iterable, total=total, desc=desc, disable=None, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def log_every(total: int, lines: int = 20) -> int:
    return max(1, total // lines)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
