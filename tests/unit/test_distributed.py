"""Two CPU processes (gloo) train like one process at the same global batch.

Tolerance: relabel is bit-identical (each label epoch is computed whole, on one rank, from its
own view stream). Training is equal up to float summation order: DDP averages the two halves'
gradients, (g1 + g2) / 2, where one process sums the whole batch in one backward pass. That
differs in the last bits, and training magnifies last-bit differences of any origin: on digits,
SGD at lr 0.05 for 2 epochs ends 2.7e-3 apart between 1 and 2 CPU threads of one process (DDP:
5.1e-3); after 1 epoch, as the cosine schedule reaches 0, 6e-7 (DDP: 2e-6). Adam's division by
the root of the second moment magnifies them for near-zero gradients. So the runs are short
and the tolerance is 1e-4, against weight changes of ~1e-1 from training (both are checked). The models here use instance norm:
with BatchNorm each CPU rank normalises its own half (PyTorch's SyncBatchNorm, which the GPU
path uses, needs a GPU), so a BatchNorm model on 2 CPU processes is a different computation.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from d3s.hparams import EvalParams

from ..conftest import DIGITS, run_cli

TOLERANCE = 1e-4  # largest absolute weight difference allowed between 1 and 2 processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_process_group(rank: int, world: int, port: int, fn, args, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        state = fn(*args)
        if rank == 0:
            torch.save(state, out)
    finally:
        dist.destroy_process_group()


def _run(world: int, fn, args, tmp_path) -> dict:
    """fn(*args) on `world` gloo processes (or in this one, for world 1); rank 0's returned state dict."""
    out = str(tmp_path / f"state-{world}.pt")
    if world == 1:
        torch.set_num_threads(1)
        return fn(*args)
    mp.spawn(_in_process_group, args=(world, _free_port(), fn, args, out), nprocs=world, join=True)
    return torch.load(out, weights_only=True)


def _assert_close(a: dict, b: dict, initial: dict) -> float:
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    moved = max((a[k].double() - initial[k].double()).abs().max().item() for k in a)
    assert worst <= TOLERANCE, f"weights differ by {worst:.2e} between 1 and 2 processes"
    assert moved > 100 * max(worst, 1e-6), f"training moved the weights by only {moved:.2e}"
    return worst


def _initial(channels: int, size: int) -> dict:
    from d3s.models import build_model

    torch.manual_seed(0)  # as both training functions seed before building
    return build_model("convnet3_w32_in", 10, channels, size).state_dict()


def _student(images_path, labels_path, epochs):
    from d3s.artifacts.images import load_synthetic
    from d3s.artifacts.labels import SoftLabelStore
    from d3s.evaluate import train_student

    synthetic = load_synthetic(images_path)
    store = SoftLabelStore(labels_path, synthetic, str(images_path))
    try:
        model = train_student(
            synthetic, store, "convnet3_w32_in", EvalParams(epochs=epochs, batch_size=8), 0, torch.device("cpu")
        )
    finally:
        store.close()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _real_data_training(epochs):
    """The teacher / full-data loop (fit_on_real) on digits, batch 64, instance-norm model."""
    import torch.nn.functional as F

    from d3s.data import batches_per_epoch, load_dataset
    from d3s.dataset_spec import DatasetSpec
    from d3s.engine import Trainer
    from d3s.models import build_model
    from d3s.runtime import generator
    from d3s.training import cosine_schedule, fit_on_real
    from d3s.transforms import Normalizer

    data = load_dataset(DatasetSpec.parse(DIGITS))
    torch.manual_seed(0)
    model = build_model("convnet3_w32_in", 10, 1, 8)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    schedule = cosine_schedule(optimiser, epochs * batches_per_epoch(len(data.train), 64))
    trainer = Trainer(model, optimiser, schedule, torch.device("cpu"))
    g = generator(0, 1)
    fit_on_real(
        "teacher",
        trainer,
        data.train,
        Normalizer([0.5], [0.3]),
        8,
        (0.7, 1.0),
        False,
        64,
        epochs,
        lambda logits, _x, y: F.cross_entropy(logits.float(), y),
        {"order": g, "views": generator(0, 2)},
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_student_on_two_processes_matches_one_process(tiny, tmp_path):
    one = _run(1, _student, (tiny["images"], tiny["labels"], 6), tmp_path)
    two = _run(2, _student, (tiny["images"], tiny["labels"], 6), tmp_path)
    _assert_close(one, two, _initial(1, 8))


def test_real_data_training_on_two_processes_matches_one_process(tmp_path):
    one = _run(1, _real_data_training, (1,), tmp_path)
    two = _run(2, _real_data_training, (1,), tmp_path)
    _assert_close(one, two, _initial(1, 8))


def _torchrun(*args) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "d3s",
        *map(str, args),
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_relabel_under_torchrun_is_bit_identical(tiny, tmp_path):
    args = ["relabel", "--images", tiny["images"], "--teacher", tiny["teacher"], "--epochs", "5", "--top-k", "4"]
    run_cli(*args, "--out", tmp_path / "one.h5", "--device", "cpu")
    done = _torchrun(*args, "--out", tmp_path / "two.h5")
    assert done.returncode == 0, done.stderr[-3000:]
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "two.h5") as b:
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file is left behind"


def test_evaluate_full_under_torchrun_writes_one_result(tmp_path, tiny):
    import json

    out = tmp_path / "full.json"
    done = _torchrun(
        "evaluate-full",
        "--data",
        DIGITS,
        "--teacher",
        tiny["teacher"],
        "--student",
        "convnet3_w32_in",
        "--full-epochs",
        "1",
        "--batch-size",
        "64",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["method"] == "full" and result["n_test"] == 359 and 0.1 < result["top1"] <= 1.0


def test_a_single_process_stage_refuses_torchrun(tiny, tmp_path):
    done = _torchrun("extract-stats", "--teacher", tiny["teacher"], "--data", DIGITS, "--out", tmp_path / "s.h5")
    assert done.returncode != 0 and "extract-stats runs on one process" in done.stderr
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("n,world", [(10, 2), (7, 2), (5, 3), (2, 2)])
def test_rank_shares_cover_a_batch_once_and_average_to_its_mean(n, world):
    from d3s.distributed import Ranks

    values = torch.arange(1.0, n + 1).square()
    parts = [values[Ranks(r, world).share(n)] for r in range(world)]
    assert torch.equal(torch.cat(parts), values)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # DDP averages the ranks' gradients: the scaled rank means must average to the global mean
    ddp_average = sum(Ranks(r, world).loss_scale(len(p), n) * p.mean() for r, p in enumerate(parts)) / world
    assert ddp_average.item() == pytest.approx(values.mean().item())


def test_two_process_student_checkpoints_by_time_and_resumes_after_sigterm(tiny, tmp_path):
    """Time-based checkpoints are one decision for both ranks (each has its own clock: deciding
    apart would mismatch their collectives and hang); a SIGTERM stops both after the same epoch."""
    import json
    import signal

    from d3s.errors import EXIT_PREEMPTED

    def args(out, *extra):
        return [
            "evaluate",
            "--images",
            tiny["images"],
            "--labels",
            tiny["labels"],
            "--data",
            DIGITS,
            "--student",
            "convnet3_w32_in",
            "--epochs",
            "600",
            "--out",
            out,
            *extra,
        ]

    assert _torchrun(*args(tmp_path / "ref.json")).returncode == 0
    resume, out = tmp_path / "ckpt", tmp_path / "r.json"
    extra = ("--resume-dir", resume, "--checkpoint-every", "0", "--checkpoint-minutes", "0.0005")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "d3s",
        *map(str, args(out, *extra)),
        "--device",
        "cpu",
        "--threads",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "student epoch 120/600" in line:
            break
    assert (resume / "state.pt").exists(), "checkpoints by time were written:\n" + "".join(seen)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both ranks
    output = "".join(seen) + proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and not out.exists(), output
    assert output.count(f"exitcode  : {EXIT_PREEMPTED}") + output.count("Preempted: stopped by SIG") >= 1, output
    done = _torchrun(*args(out, *extra[:2]))
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr[-3000:]
    assert not resume.exists()
    ref, got = json.loads((tmp_path / "ref.json").read_text()), json.loads(out.read_text())
    assert (got["top1"], got["top5"]) == (ref["top1"], ref["top5"])
