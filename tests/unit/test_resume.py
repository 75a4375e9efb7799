"""Long stages survive being killed: SIGKILL then restart, SIGTERM (checkpoint + exit 75), stale checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from d3s.artifacts.images import load_synthetic
from d3s.errors import EXIT_PREEMPTED

from ..conftest import run_cli

ITERATIONS = "250"  # x 3 minibatches: a few seconds of work, long enough to interrupt


def _distill_args(tiny, out, *extra):
    return [
        "distill",
        "--teacher",
        tiny["teacher"],
        "--stats",
        tiny["stats"],
        "--shard",
        "i0-2_call",
        "--batch-size",
        "7",
        "--iterations",
        ITERATIONS,
        "--out",
        out,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _start(args):
    return subprocess.Popen(
        [sys.executable, "-m", "d3s", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_line(proc, text: str) -> str:
    """Read the job's output until a line containing `text` (it is then past start-up, mid-loop)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the job ended without printing {text!r}:\n" + "".join(seen))


def _wait_for(path, proc, timeout=120):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the job ended before a checkpoint appeared:\n" + proc.stdout.read()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    run_cli(*_distill_args(tiny, out))
    return load_synthetic(out)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    for block in a.loss_curves:
        for key in a.loss_curves[block]:
            np.testing.assert_array_equal(a.loss_curves[block][key], b.loss_curves[block][key])


def test_sigkill_then_restart_gives_the_uninterrupted_result(tiny, reference, tmp_path):
    resume, out = tmp_path / "ckpt", tmp_path / "out.h5"
    _kill_and_restart(_distill_args(tiny, out, "--resume-dir", resume, "--checkpoint-every", "60"), resume, out)
    _assert_same(reference, load_synthetic(out))  # bit-identical on the CPU


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGURG])  # SLURM's time limit; the profile's warning
def test_a_stop_signal_checkpoints_and_exits_for_a_retry(tiny, reference, tmp_path, stop):
    resume, out = tmp_path / "ckpt", tmp_path / "out.h5"
    args = _distill_args(tiny, out, "--resume-dir", resume, "--checkpoint-every", "0")  # only the signal's checkpoint
    proc = _start(args)
    _wait_for_line(proc, "iteration 1/")  # inside the optimisation loop
    proc.send_signal(stop)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, output
    assert f"Preempted: stopped by {stop.name}" in output and (resume / "state.pt").exists() and not out.exists()
    done = subprocess.run([sys.executable, "-m", "d3s", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"(the previous run stopped on {stop.name})" in done.stderr  # a retried job's log says why it resumed
    _assert_same(reference, load_synthetic(out))


def test_checkpoint_of_another_config_is_not_reused(tiny, tmp_path):
    resume = tmp_path / "ckpt"
    proc = _start(_distill_args(tiny, tmp_path / "a.h5", "--resume-dir", resume, "--checkpoint-every", "30"))
    _wait_for(resume / "state.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    changed = _distill_args(tiny, tmp_path / "b.h5", "--resume-dir", resume, "--lr", "0.05")
    done = subprocess.run([sys.executable, "-m", "d3s", *map(str, changed)], capture_output=True, text=True)
    assert done.returncode == 0 and "was made with a different params: starting over" in done.stderr
    fresh = tmp_path / "c.h5"
    run_cli(*_distill_args(tiny, fresh, "--lr", "0.05"))
    _assert_same(load_synthetic(fresh), load_synthetic(tmp_path / "b.h5"))


def test_teacher_training_killed_and_restarted_gives_the_same_teacher(tmp_path):
    from d3s.artifacts.teacher import load_teacher

    from ..conftest import DIGITS

    def args(out, *extra):
        return [
            "train-teacher",
            "--data",
            DIGITS,
            "--arch",
            "convnet3_w32",
            "--seed",
            "3",
            "--epochs",
            "12",
            "--out",
            out,
            "--device",
            "cpu",
            "--threads",
            "1",
            *extra,
        ]

    run_cli(*args(tmp_path / "ref.h5"))
    resume, out = tmp_path / "ckpt", tmp_path / "t.h5"
    proc = _start(args(out, "--resume-dir", resume, "--checkpoint-every", "2"))
    _wait_for(resume / "state.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(
        [sys.executable, "-m", "d3s", *map(str, args(out, "--resume-dir", resume))], capture_output=True, text=True
    )
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
    assert load_teacher(out).weights_sha256 == load_teacher(tmp_path / "ref.h5").weights_sha256
    assert not resume.exists()


def test_student_evaluation_resumes_after_sigterm(tiny, tmp_path):
    import json

    from ..conftest import DIGITS

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
            "convnet3_w32",
            "--epochs",
            "3000",
            "--out",
            out,
            "--device",
            "cpu",
            "--threads",
            "1",
            *extra,
        ]

    run_cli(*args(tmp_path / "ref.json"))
    resume, out = tmp_path / "ckpt", tmp_path / "r.json"
    proc = _start(args(out, "--resume-dir", resume, "--checkpoint-every", "0"))
    _wait_for_line(proc, "student epoch 300/3000")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, output
    done = subprocess.run(
        [sys.executable, "-m", "d3s", *map(str, args(out, "--resume-dir", resume, "--checkpoint-every", "0"))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
    assert not resume.exists()
    ref, got = json.loads((tmp_path / "ref.json").read_text()), json.loads(out.read_text())
    assert (got["top1"], got["top5"]) == (ref["top1"], ref["top5"])


def test_checkpoints_are_due_by_count_or_by_wall_time(tmp_path, caplog):
    from d3s.checkpoint import Checkpointer

    now = [0.0]
    ckpt = Checkpointer(tmp_path / "ckpt", {"stage": "x"}, every=10, minutes=15, clock=lambda: now[0])
    assert not ckpt.due(3) and ckpt.due(10)
    now[0] = 14 * 60
    assert not ckpt.due(3)
    now[0] = 15 * 60
    assert ckpt.due(3), "15 minutes after the start a checkpoint is due whatever the step"
    with caplog.at_level("INFO", logger="d3s"):
        ckpt.save({"step": 3, "weights": __import__("torch").zeros(1000)})
    assert "MB)" in caplog.text, "each checkpoint logs its size"
    assert not ckpt.due(4), "saving restarts the clock"
    now[0] += 15 * 60
    assert ckpt.due(4)
    by_time_only = Checkpointer(tmp_path / "c2", {}, every=0, minutes=0.5, clock=lambda: now[0])
    assert not by_time_only.due(1)
    now[0] += 30
    assert by_time_only.due(1)
    assert not Checkpointer(None, {}, every=1, minutes=1).due(1), "without a directory nothing is ever due"


def test_full_data_student_resumes_after_sigterm(tiny, tmp_path):
    import json

    from ..conftest import DIGITS

    def args(out, *extra):
        return [
            "evaluate-full",
            "--data",
            DIGITS,
            "--teacher",
            tiny["teacher"],
            "--student",
            "convnet3_w32",
            "--full-epochs",
            "40",
            "--batch-size",
            "256",
            "--out",
            out,
            "--device",
            "cpu",
            "--threads",
            "1",
            *extra,
        ]

    run_cli(*args(tmp_path / "ref.json"))
    resume, out = tmp_path / "ckpt", tmp_path / "r.json"
    proc = _start(args(out, "--resume-dir", resume, "--checkpoint-every", "0"))
    _wait_for_line(proc, "full-data student epoch 2/40")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, output
    done = subprocess.run(
        [sys.executable, "-m", "d3s", *map(str, args(out, "--resume-dir", resume))], capture_output=True, text=True
    )
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
    assert not resume.exists()
    ref, got = json.loads((tmp_path / "ref.json").read_text()), json.loads(out.read_text())
    assert (got["top1"], got["top5"]) == (ref["top1"], ref["top5"])


# ------------------------------------------------------------------ extract-stats and relabel: the same, file for file


def _stats_args(tiny, out, *extra):
    from ..conftest import DIGITS

    # 225 batches of 8 images x 2 random views: ~2 s of work, and the views' generator must resume too
    return [
        "extract-stats",
        "--teacher",
        tiny["teacher"],
        "--data",
        DIGITS,
        "--batch-size",
        "8",
        "--views",
        "2",
        "--seed",
        "4",
        "--out",
        out,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _relabel_args(tiny, out, *extra):
    return [
        "relabel",
        "--images",
        tiny["images"],
        "--teacher",
        tiny["teacher"],
        "--epochs",
        "300",
        "--batch-size",
        "4",
        "--seed",
        "2",
        "--out",
        out,
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
    ]


def _h5_contents(path) -> dict:
    """Every dataset and attribute of an HDF5 file, but the time it was created."""
    import h5py

    found = {}
    with h5py.File(path, "r") as f:
        found.update({f"@{k}": v for k, v in f.attrs.items() if k != "created_utc"})

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                found[name] = obj[()]
            found.update({f"{name}@{k}": v for k, v in obj.attrs.items()})

        f.visititems(visit)
    return found


def _assert_same_file(a, b):
    x, y = _h5_contents(a), _h5_contents(b)
    assert sorted(x) == sorted(y)
    for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.fixture(scope="module")
def stats_reference(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats_ref") / "ref.h5"
    run_cli(*_stats_args(tiny, out))
    return out


@pytest.fixture(scope="module")
def labels_reference(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("labels_ref")
    run_cli(*_relabel_args(tiny, d / "dense.h5"))
    run_cli(*_relabel_args(tiny, d / "topk.h5", "--top-k", "3"))
    return {"dense": d / "dense.h5", "topk": d / "topk.h5"}


def _kill_and_restart(args, resume, out):
    proc = _start(args)
    _wait_for(resume / "state.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "d3s", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
    assert not resume.exists(), "the checkpoint is removed once the artifact is written"


def _stop_and_restart(args, resume, out, line):
    proc = _start(args)
    _wait_for_line(proc, line)  # mid-loop
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, output
    assert "Preempted: stopped by" in output and (resume / "state.pt").exists() and not out.exists()
    done = subprocess.run([sys.executable, "-m", "d3s", *map(str, args)], capture_output=True, text=True)
    assert done.returncode == 0 and "resuming from" in done.stderr, done.stderr
    assert not resume.exists()


def test_statistics_pass_killed_and_restarted_gives_the_same_file(tiny, stats_reference, tmp_path):
    resume, out = tmp_path / "ckpt", tmp_path / "s.h5"
    _kill_and_restart(_stats_args(tiny, out, "--resume-dir", resume, "--checkpoint-every", "20"), resume, out)
    _assert_same_file(stats_reference, out)  # bit-identical on the CPU: moments, counts, views


def test_statistics_pass_stops_on_sigterm_and_resumes(tiny, stats_reference, tmp_path):
    resume, out = tmp_path / "ckpt", tmp_path / "s.h5"
    _stop_and_restart(_stats_args(tiny, out, "--resume-dir", resume, "--checkpoint-every", "0"), resume, out, "stats: ")
    _assert_same_file(stats_reference, out)


def test_relabel_killed_and_restarted_gives_the_same_labels(tiny, labels_reference, tmp_path):
    resume, out = tmp_path / "ckpt", tmp_path / "l.h5"
    _kill_and_restart(_relabel_args(tiny, out, "--resume-dir", resume, "--checkpoint-every", "20"), resume, out)
    _assert_same_file(labels_reference["dense"], out)


def test_relabel_stops_on_sigterm_and_resumes(tiny, labels_reference, tmp_path):
    resume, out = tmp_path / "ckpt", tmp_path / "l.h5"
    args = _relabel_args(tiny, out, "--top-k", "3", "--resume-dir", resume, "--checkpoint-every", "0")
    _stop_and_restart(args, resume, out, "relabel epoch ")
    _assert_same_file(labels_reference["topk"], out)


def test_checkpoint_frequency_defaults_are_the_commands():
    """The workflow's checkpoint_every.<stage> reaches the command as D3S_<STAGE>_CHECKPOINT_EVERY: its
    schema default must be the command's own."""
    import yaml

    from d3s.cli import main

    from ..conftest import REPO

    schema = yaml.safe_load((REPO / "config/schema/config.schema.yaml").read_text())
    every = schema["properties"]["checkpoint_every"]["properties"]
    commands = {
        "teacher": "train-teacher",
        "stats": "extract-stats",
        "distill": "distill",
        "relabel": "relabel",
        "evaluate": "evaluate",
        "evaluate_full": "evaluate-full",
    }
    assert set(every) == {*commands, "minutes"}
    for key, command in commands.items():
        options = {p.name: p for p in main.commands[command].params}
        count, minutes = options["checkpoint_every"], options["checkpoint_minutes"]
        assert count.default == every[key]["default"] and count.envvar == f"D3S_{key.upper()}_CHECKPOINT_EVERY", key
        assert minutes.default == every["minutes"]["default"] and minutes.envvar == "D3S_CHECKPOINT_MINUTES", key
