"""GPU check: throughput, ratios, peak memory and read-backs per step of every hot loop, in one run.

    python benchmarks/gpu_check.py                  # the GPU check: ResNet-18 at 64 px / 200 classes and
                                                    # at 224 px / 1000 classes, random inputs (< 8 min on an H200)
    python benchmarks/gpu_check.py --size cpu       # CPU-sized: ConvNet-3 at 32 px, ResNet-18 at 64 px (minutes)
    python benchmarks/gpu_check.py --size tiny      # seconds; tests/unit/test_gpu_check.py runs it
    ... --json figures.json                         # also write every figure

Needs only the d3s package (`pip install --no-deps -e .` on a machine with torch, timm, h5py,
click and pyyaml). Every figure runs the real stage code: `train_student` (training), the
workflow's `accuracy` pass (inference through the loader), `extract_stats` (statistics
pass), `Synthesis.step` (one D3S / SRe2L step), `generate_soft_labels` (relabel). Times are
differences between a short and a longer run of the same call, so set-up cancels. On CUDA,
read-backs per step come from torch.cuda.set_sync_debug_mode("warn") (each warning is one
host-device synchronisation), counted the same way; on the CPU there is no device to wait
for and the count is left out (tests/unit/test_readbacks.py counts the calls instead).

Targets (issue 10, on the GPU): synthesis step <= 1.5x a plain teacher forward+backward on the
same batch; statistics pass >= 0.8x inference; student training in bf16 >= 2x fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fixtures import random_teacher  # noqa: E402

from d3s.artifacts.images import SyntheticSet  # noqa: E402
from d3s.bn_inputs import BNInputRecorder  # noqa: E402
from d3s.data import ArrayImageDataset  # noqa: E402
from d3s.distill import GaussianMatching, RunningStatsMatching, Synthesis  # noqa: E402
from d3s.evaluate import train_student  # noqa: E402
from d3s.hparams import DistillParams, EvalParams, RelabelParams  # noqa: E402
from d3s.relabel import generate_soft_labels  # noqa: E402
from d3s.runtime import configure_speed, generator, prepare_input, prepare_model, resolve_device  # noqa: E402
from d3s.stats import extract_stats  # noqa: E402
from d3s.training import accuracy  # noqa: E402

# (label, architecture, pixels, classes, batch, steps): steps are the extra steps each timing adds
CASES = {
    "gpu": [
        ("Tiny-ImageNet-like", "resnet18_cifar", 64, 200, 256, 30),
        ("ImageNet-like", "resnet18", 224, 1000, 256, 20),
    ],
    "cpu": [("CIFAR-like", "convnet3", 32, 10, 64, 6), ("Tiny-ImageNet-shaped", "resnet18", 64, 200, 64, 4)],
    "tiny": [("tiny", "convnet3_w32", 16, 10, 16, 4)],
}


class Clock:
    """Wall time of a block with the device drained on both sides; counts sync warnings on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def run(self, out: dict):
        self.sync()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            if self.device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            t0 = time.perf_counter()
            try:
                yield
                self.sync()
            finally:
                if self.device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        out["seconds"] = time.perf_counter() - t0
        out["syncs"] = sum("synchronizing" in str(w.message) for w in seen)


def timed(clock: Clock, fn, k: int) -> tuple[float, float | None]:
    """(seconds, syncs) per unit of fn(k), after a warm-up call (for loops without set-up of their own)."""
    fn(2)
    out: dict = {}
    with clock.run(out):
        fn(k)
    return out["seconds"] / k, (out["syncs"] / k if clock.device.type == "cuda" else None)


def timed_difference(clock: Clock, fn, short: int, long: int) -> tuple[float, float | None]:
    """(seconds per extra unit, syncs per extra unit) of fn(long) against fn(short)."""
    a, b = {}, {}
    with clock.run(a):
        fn(short)
    with clock.run(b):
        fn(long)
    per = (b["seconds"] - a["seconds"]) / (long - short)
    syncs = (b["syncs"] - a["syncs"]) / (long - short) if clock.device.type == "cuda" else None
    return max(per, 1e-9), syncs


@contextmanager
def peak_memory(device: torch.device, out: dict, key: str):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        out[key] = torch.cuda.max_memory_allocated(device) / 2**30


def random_set(n: int, classes: int, size: int, seed: int = 0) -> SyntheticSet:
    rng = np.random.default_rng(seed)
    return SyntheticSet(
        images=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
        labels=np.arange(n) % classes,
        ipc_index=np.arange(n) // classes,
        classes=[str(c) for c in range(classes)],
        method="random",
        teachers=["-"],
        norm_mean=[0.5] * 3,
        norm_std=[0.25] * 3,
        hflip=True,
        config={},
        seed=0,
    )


def check_case(label, arch, size, classes, batch, steps, device, workers) -> dict:
    fig: dict = {"case": label, "arch": arch, "pixels": size, "classes": classes, "batch": batch}
    clock = Clock(device)
    teacher = random_teacher(arch, classes, 3, size)
    teacher.model.to(device)
    n = batch * 2  # a distilled set of two batches: epochs of 2 steps

    # -- student training (the distillation's evaluation loop), fp32 and bf16
    for precision in ("fp32", "bf16"):
        synthetic = random_set(n, classes, size)

        def train(epochs, precision=precision, synthetic=synthetic):
            train_student(
                synthetic,
                None,
                arch,
                EvalParams(epochs=epochs, batch_size=batch, label_mode="hard", precision=precision),
                0,
                device,
            )

        with peak_memory(device, fig, f"train_{precision}_peak_gib"):
            train(1)  # warm-up: kernels chosen, allocator filled
            per_epoch, syncs = timed_difference(clock, train, 1, 1 + steps // 2 + 1)
        fig[f"train_{precision}_img_s"] = n / per_epoch
        fig[f"train_{precision}_syncs_per_step"] = None if syncs is None else syncs / 2
    fig["train_bf16_over_fp32"] = fig["train_bf16_img_s"] / fig["train_fp32_img_s"]

    # -- inference through the workflow's loader (accuracy) and the statistics pass over the same images
    data = ArrayImageDataset(
        np.random.default_rng(1).integers(0, 256, (batch * (steps + 2), size, size, 3), dtype=np.uint8),
        np.zeros(batch * (steps + 2), dtype=np.int64),
    )
    short = torch.utils.data.Subset(data, range(batch * 2))
    norm = teacher.normalizer(device)

    def infer(ds):
        accuracy(teacher.model, ds, norm, size, device, batch_size=batch, workers=workers)

    def stats_pass(ds):
        return extract_stats(teacher, ds, "positions", batch, device, workers)

    for name, fn in (("inference", infer), ("stats", stats_pass)):
        with peak_memory(device, fig, f"{name}_peak_gib"):
            fn(short)
            a, b = {}, {}
            with clock.run(a):
                fn(short)
            with clock.run(b):
                fn(data)
        fig[f"{name}_img_s"] = (len(data) - len(short)) / max(b["seconds"] - a["seconds"], 1e-9)
    fig["stats_over_inference"] = fig["stats_img_s"] / fig["inference_img_s"]
    layer_stats = stats_pass(short)

    # -- plain forward/backward of the teacher on the distillation batch: the floor of a synthesis step
    images = torch.randn(batch, 3, size, size, device=device, requires_grad=True)
    labels = torch.arange(batch, device=device) % classes
    model = prepare_model(teacher.model, device)

    def plain(k):
        for _ in range(k):
            loss = F.cross_entropy(model(prepare_input(images)), labels)
            images.grad = None
            loss.backward()

    fig["plain_fwd_bwd_ms"] = 1e3 * timed(clock, plain, steps)[0]

    # -- one synthesis step (D3S, SRe2L), fp32 and bf16 forward
    for method in ("d3s", "sre2l"):
        for precision in ("fp32", "bf16"):
            params = DistillParams(iterations=10_000, batch_size=batch, precision=precision)
            with BNInputRecorder(teacher.model, teacher.path) as rec:
                objective = (
                    GaussianMatching([teacher], [rec], [layer_stats], "positions", params, device)
                    if method == "d3s"
                    else RunningStatsMatching([teacher], [rec], params)
                )
                labels_cpu = torch.arange(batch) % classes
                init = torch.randn(batch, 3, size, size, generator=generator(0, 1)).to(device)
                synthesis = Synthesis([teacher], [rec], objective, labels_cpu, init, params, generator(0, 2), device)
                counter = iter(range(10**9))

                def step(k, synthesis=synthesis, counter=counter):
                    for _ in range(k):
                        synthesis.step(next(counter))

                key = f"{method}_step_{precision}"
                with peak_memory(device, fig, f"{key}_peak_gib"):
                    per, syncs = timed(clock, step, steps)
                synthesis.raise_if_non_finite()
            fig[f"{key}_ms"] = 1e3 * per
            fig[f"{key}_syncs"] = syncs
    fig["d3s_step_over_plain"] = fig["d3s_step_fp32_ms"] / fig["plain_fwd_bwd_ms"]
    fig["d3s_over_sre2l"] = fig["d3s_step_fp32_ms"] / fig["sre2l_step_fp32_ms"]

    # -- relabel: label epochs over a distilled set
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            synthetic = random_set(batch * 4, classes, size)
            relabel_params = lambda e, p=precision: RelabelParams(epochs=e, batch_size=batch, precision=p)  # noqa: E731

            def relabel(epochs, synthetic=synthetic, rp=relabel_params):
                generate_soft_labels(
                    [teacher], synthetic, "<random>", rp(epochs), 0, Path(tmp) / f"l{epochs}.h5", device
                )

            with peak_memory(device, fig, f"relabel_{precision}_peak_gib"):
                relabel(1)
                per_epoch, syncs = timed_difference(clock, relabel, 1, 1 + steps // 2 + 1)
            fig[f"relabel_{precision}_img_s"] = len(synthetic.labels) / per_epoch
            fig[f"relabel_{precision}_syncs_per_step"] = None if syncs is None else syncs / 4
    return fig


ROWS = [
    ("student training fp32 (img/s)", "train_fp32_img_s"),
    ("student training bf16 (img/s)", "train_bf16_img_s"),
    ("  bf16 / fp32", "train_bf16_over_fp32"),
    ("inference through the loader (img/s)", "inference_img_s"),
    ("statistics pass (img/s)", "stats_img_s"),
    ("  statistics / inference", "stats_over_inference"),
    ("plain teacher fwd+bwd on the batch (ms)", "plain_fwd_bwd_ms"),
    ("D3S step fp32 (ms)", "d3s_step_fp32_ms"),
    ("D3S step bf16 forward (ms)", "d3s_step_bf16_ms"),
    ("SRe2L step fp32 (ms)", "sre2l_step_fp32_ms"),
    ("  D3S step / plain fwd+bwd", "d3s_step_over_plain"),
    ("  D3S / SRe2L step", "d3s_over_sre2l"),
    ("relabel fp32 (img/s)", "relabel_fp32_img_s"),
    ("relabel bf16 (img/s)", "relabel_bf16_img_s"),
    (
        "read-backs per step: training / D3S / relabel",
        ("train_bf16_syncs_per_step", "d3s_step_fp32_syncs", "relabel_fp32_syncs_per_step"),
    ),
    (
        "peak GPU memory (GiB): training / stats / D3S step",
        ("train_fp32_peak_gib", "stats_peak_gib", "d3s_step_fp32_peak_gib"),
    ),
]


def _cell(fig: dict, key) -> str:
    if isinstance(key, tuple):
        return " / ".join(_cell(fig, k) for k in key)
    v = fig.get(key)
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def render(figs: list[dict], device: torch.device) -> str:
    head = (
        "| figure | "
        + " | ".join(
            f"{f['case']}: {f['arch']} {f['pixels']} px, {f['classes']} classes, batch {f['batch']}" for f in figs
        )
        + " |"
    )
    lines = [f"device: {_device_name(device)}; torch {torch.__version__}", "", head, "|---|" + "---|" * len(figs)]
    lines += [f"| {name} | " + " | ".join(_cell(f, key) for f in figs) + " |" for name, key in ROWS]
    return "\n".join(lines)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(CASES), default=None, help="gpu on CUDA, else cpu")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: 8 on CUDA, 0 on the CPU)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    configure_speed(device)  # cudnn.benchmark, channels_last on CUDA: the workflow's defaults
    size = args.size or ("gpu" if device.type == "cuda" else "cpu")
    workers = (
        args.workers
        if args.workers is not None
        else (min(8, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0)
    )
    figs = []
    for case in CASES[size]:
        t0 = time.perf_counter()
        figs.append(check_case(*case, device=device, workers=workers))
        figs[-1]["wall_seconds"] = time.perf_counter() - t0
        print(f"{case[0]} done in {figs[-1]['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    print(render(figs, device), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": _device_name(device), "figures": figs}, indent=1) + "\n")
    return figs


if __name__ == "__main__":
    main()
