"""Preemption through Snakemake: a SIGTERMed job checkpoints, exits 75, and `--retries` resumes it.

This is the path a SLURM job takes before its time limit: SLURM sends SIGTERM, the job saves a
checkpoint into its sidecar folder, exits non-zero, and Snakemake starts it again (attempt 2),
which continues from the checkpoint. The result must equal an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from d3s.synthetic import load_synthetic

from .test_workflow import SNAKEMAKE, REPO, TINY, snakemake

pytestmark = pytest.mark.workflow
TARGET = "results/digits/d3s/ipc2/default/images.h5"


def _config() -> dict:
    config = yaml.safe_load(TINY.read_text())
    # One shard of 20 images; the first periodic checkpoint (step 10) says the loop runs, and
    # hundreds of steps remain to be interrupted.
    config.update(methods=["d3s"], ipcs=[2], ipc_per_shard=2, checkpoint_every={"distill": 10})
    config["distill"] = {**config["distill"], "iterations": 400}
    return config


def _distill_process(workdir: Path) -> int | None:
    """The pid of the Python process running `d3s distill` in `workdir` (not its bash wrapper)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"python" in os.path.basename(argv[0]) and b"distill" in argv and Path(cwd) == workdir:
            return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finding the job's process needs /proc (Linux)")
def test_sigterm_then_snakemake_retry_resumes_to_the_same_images(tmp_path):
    config = _config()
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    interrupted.mkdir()
    (interrupted / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(interrupted), "--cores", "2",
           "--configfile", str(interrupted / "config.yaml"), "--retries", "1", TARGET]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ckpt_root = interrupted / "work" / "ckpt" / "distill_shard"
        deadline = time.time() + 300
        while not list(ckpt_root.glob("*/state.pt")):  # a periodic checkpoint: the loop is running
            assert proc.poll() is None, "snakemake ended before distillation checkpointed:\n" + proc.stdout.read()
            assert time.time() < deadline, "no distillation checkpoint appeared within 300 s"
            time.sleep(0.02)
        pid = _distill_process(interrupted)
        assert pid is not None, "the distillation process was not found"
        os.kill(pid, signal.SIGTERM)  # what SLURM sends before a time limit or preemption
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "exit status 75" in output  # attempt 1 stopped for a retry...
    log = next((interrupted / "logs" / "distill_shard").rglob("*.log")).read_text()
    assert "resuming from" in log  # ...and attempt 2 continued from the checkpoint
    assert not any(ckpt_root.glob("*/state.pt")), "the checkpoint is removed after success"

    reference.mkdir()
    snakemake(reference, TARGET, config=config)
    a, b = load_synthetic(interrupted / TARGET), load_synthetic(reference / TARGET)
    np.testing.assert_array_equal(a.images, b.images)  # bit-identical on the CPU
    for block in a.loss_curves:
        for key in a.loss_curves[block]:
            np.testing.assert_array_equal(a.loss_curves[block][key], b.loss_curves[block][key])
