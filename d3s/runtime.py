"""Where and how a stage runs: device choice, CPU threads, seeding and progress output."""

from __future__ import annotations

import logging
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import D3SError

log = logging.getLogger("d3s")


# Set by SLURM in a job (or step) that was given GPUs.
SLURM_GPU_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE")


def allocated_gpus(environ=os.environ) -> str | None:
    """'NAME=value' of what says this SLURM job was given GPUs, else None: a SLURM variable, or
    the workflow's D3S_REQUESTED_GPUS inside a SLURM job (the executor plugin runs an array
    task without srun and removes SLURM's GPU variables first)."""
    for name in SLURM_GPU_VARIABLES:
        value = environ.get(name, "").strip()
        none = ("", "N/A", "0") if name == "SLURM_GPUS_ON_NODE" else ("", "N/A")  # a count; the others list ids
        if value not in none:
            return f"{name}={value}"
    requested = environ.get("D3S_REQUESTED_GPUS", "0").strip()
    if environ.get("SLURM_JOB_ID") and requested not in ("", "0"):
        return f"SLURM job {environ['SLURM_JOB_ID']} asked for them: D3S_REQUESTED_GPUS={requested}"
    return None


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present (honouring CUDA_VISIBLE_DEVICES, as SLURM sets it), else CPU.

    A job that SLURM gave GPUs but whose torch sees none (a CPU-only build resolved on a
    GPU-less login node, a driver mismatch) stops here: running it on the CPU without a word
    would waste the GPU allocation for days. `--device cpu` runs on the CPU on purpose.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        gpus = allocated_gpus()
        if gpus:
            raise D3SError(
                f"--device auto: this job was given GPUs ({gpus}, CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}) but torch {torch.__version__} sees none "
                f"(built for CUDA {torch.version.cuda or 'none: a CPU-only build'}). Install a CUDA build of torch "
                "in the job's environment (README, 'Cluster (SLURM)': envs/d3s.yaml, CONDA_OVERRIDE_CUDA), "
                "or set `device: cpu` (--device cpu) to run on the CPU on purpose"
            )
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise D3SError(f"--device {name}: CUDA is not available on this machine (use 'auto' or 'cpu')")
    return device


def autocast(device: torch.device, precision: str):
    """The forward-pass precision context: fp32, or bf16 autocast (training, relabel, the synthesis forward).

    Moments, covariances and the KL never run under it: callers compute them in fp32/fp64
    outside the context (see `full_precision`).
    """
    if precision not in ("fp32", "bf16"):
        raise D3SError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def full_precision(device: torch.device):
    """Switch autocast off inside a bf16 region: statistics and the KL need fp32 inputs."""
    return torch.autocast(device.type, enabled=False)


def setup_cuda() -> None:
    """CUDA defaults for speed that keep the statistics exact.

    cudnn.benchmark picks the fastest convolution kernels for the (fixed) input shapes. TF32
    stays off for matmuls: the covariance E[x x^T] - mu mu^T in TF32 (10-bit mantissa) loses
    the small eigenvalues the KL's log-determinant and inverse depend on. Convolutions may use
    TF32 (PyTorch's default); bf16 autocast is the faster, explicit choice for them.
    """
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False


@dataclass
class Speed:
    """Process-wide speed settings (they change no result beyond float rounding), set by the CLI."""

    channels_last: str = "auto"  # auto: on CUDA only; on CPUs `on` can be faster too (config schema: figures)
    compile: bool = False  # torch.compile the training and relabel models (minutes of start-up, faster steps)
    device_type: str = "cpu"

    def use_channels_last(self) -> bool:
        return self.channels_last == "on" or (self.channels_last == "auto" and self.device_type == "cuda")


SPEED = Speed()


def configure_speed(device: torch.device, channels_last: str = "auto", compile: bool = False) -> None:
    if channels_last not in ("auto", "on", "off"):
        raise D3SError(f"channels_last must be auto, on or off, got {channels_last!r}")
    SPEED.channels_last, SPEED.compile, SPEED.device_type = channels_last, compile, device.type
    if device.type == "cuda":
        setup_cuda()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model on `device`, in the run's memory format (in place: parameters keep their identity)."""
    model = model.to(device)
    if SPEED.use_channels_last():
        model = model.to(memory_format=torch.channels_last)
    return model


def maybe_compile(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile'd when the run asks for it; never for models with recording hooks (stats, distill)."""
    return torch.compile(module) if SPEED.compile else module


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if SPEED.use_channels_last() and x.dim() == 4 else x


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without blocking the host: pinned, then an asynchronous copy on CUDA."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
    kwargs.setdefault("disable", None)  # None: only on a terminal
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


def log_every(total: int, lines: int = 20) -> int:
    return max(1, total // lines)


def setup_logging(verbose: bool = False, rank: int = 0) -> None:
    """INFO lines on stderr; with several processes only rank 0's (the others warn and fail loudly)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
