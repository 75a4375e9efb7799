"""Step loops read nothing back from the device: host reads per step, counted over N and 2N steps.

On a GPU every `.item()`, `.cpu()`, `bool(t)`, `.tolist()` or `.numpy()` of a device tensor
stalls the host until the device catches up. On the CPU there is no device to wait for, so
this counts the calls that d3s's own code makes (library internals such as Adam's host-side
step counter are not ours and are not device tensors on a GPU either). A loop's fixed costs
(log lines, the final copy) are the same for N and 2N steps, so (count(2N) - count(N)) / N is
what each further step costs; benchmarks/gpu_check.py measures the same with
torch.cuda.set_sync_debug_mode on a GPU.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import d3s
from d3s.hparams import DistillParams, EvalParams, RelabelParams
from d3s.shard import Shard

PACKAGE = str(Path(d3s.__file__).parent)
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@contextmanager
def count_reads():
    """Count calls of the read-back methods of torch.Tensor made directly from d3s code."""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        original = originals[name]

        def method(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
                counts["n"] += 1
            return original(self, *args, **kwargs)

        return method

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def per_step(run, n: int, steps_of) -> float:
    with count_reads() as once:
        run(n)
    with count_reads() as twice:
        run(2 * n)
    return (twice["n"] - once["n"]) / (steps_of(2 * n) - steps_of(n))


def test_distill_reads_back_less_than_once_per_step(tiny):
    from d3s.artifacts.stats import load_stats
    from d3s.artifacts.teacher import load_teacher
    from d3s.distill import distill

    teacher = load_teacher(tiny["teacher"])
    stats = [load_stats(tiny["stats"], teacher)]

    def run(iterations):
        params = DistillParams(iterations=iterations, batch_size=7)  # 20 images: 3 blocks per iteration
        distill([teacher], stats, "positions", Shard(0, 2), params, 0, torch.device("cpu"))

    reads = per_step(run, 40, lambda it: 3 * it)
    assert reads <= 1.0, f"{reads:.2f} read-backs per distillation step"


def test_student_training_reads_back_less_than_once_per_step(tiny):
    from d3s.artifacts.images import load_synthetic
    from d3s.artifacts.labels import SoftLabelStore
    from d3s.evaluate import train_student

    synthetic = load_synthetic(tiny["images"])
    store = SoftLabelStore(tiny["labels"], synthetic, str(tiny["images"]))

    def run(epochs):
        train_student(synthetic, store, "convnet3_w32", EvalParams(epochs=epochs, batch_size=4), 0, torch.device("cpu"))

    try:
        reads = per_step(run, 20, lambda epochs: 5 * epochs)  # 20 images, batch 4: 5 steps per epoch
    finally:
        store.close()
    assert reads <= 1.0, f"{reads:.2f} read-backs per student step"


def test_relabel_reads_back_at_most_once_per_step(tiny, tmp_path):
    from d3s.artifacts.images import load_synthetic
    from d3s.artifacts.teacher import load_teacher
    from d3s.relabel import generate_soft_labels

    teacher, synthetic = load_teacher(tiny["teacher"]), load_synthetic(tiny["images"])

    def run(epochs):
        generate_soft_labels(
            [teacher],
            synthetic,
            str(tiny["images"]),
            RelabelParams(epochs=epochs, batch_size=4),
            0,
            tmp_path / f"labels{epochs}.h5",
            torch.device("cpu"),
        )

    reads = per_step(run, 6, lambda epochs: 5 * epochs)  # 5 batches per epoch; one packed copy per epoch
    assert reads <= 1.0, f"{reads:.2f} read-backs per relabel step"


def test_the_counter_sees_a_read_back_in_a_loop():
    """The instrument itself: a d3s function that calls .item() per step is counted once per step."""
    from d3s.engine import LossMeter

    meter = LossMeter(1, torch.device("cpu"))

    def run(steps):
        for s in range(steps):
            meter.add(0, s, torch.tensor(1.0), 1)
            meter.read()  # the sync a log line costs: here on every step

    assert per_step(run, 5, lambda s: s) >= 1.0


@pytest.mark.parametrize("bad_step", [0, 3])
def test_loss_meter_finds_the_first_non_finite_step(bad_step):
    from d3s.engine import LossMeter

    meter = LossMeter(2, torch.device("cpu"))
    for s in range(6):
        meter.add(s // 3, s, torch.tensor(float("nan") if s >= bad_step else 0.5), 2)
    sums, bad = meter.read()
    assert bad == bad_step
    clean = LossMeter(2, torch.device("cpu"))
    for s in range(6):
        clean.add(s // 3, s, torch.tensor(0.5 * s), 2)
    sums, bad = clean.read()
    assert bad == -1 and sums[1].tolist() == [6.0, 6.0] and sums[0, 1].item() == pytest.approx(2 * 0.5 * (3 + 4 + 5))
