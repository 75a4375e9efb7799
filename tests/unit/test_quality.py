"""A quality check that can fail: D3S on digits at IPC 10 must teach a student far above chance."""

from __future__ import annotations

import json

import pytest

from ..conftest import DIGITS, FAST, run_cli


@pytest.mark.workflow
def test_d3s_ipc10_student_on_digits_is_far_above_chance(tmp_path):
    # Default hyperparameters (config/config.yaml) at a quarter of the synthesis iterations and half the
    # epochs, to keep the suite fast. Measured here (2026-12-04): teacher 15 epochs, 250 iterations,
    # 150 label and student epochs give 96.9 / 97.2 / 96.4 % for student seeds 0 / 1 / 2; chance is
    # 10 %. A broken objective, label order or soft-label replay falls far under the 90 % bar
    # (measured: 1 iteration, i.e. images still near their initial noise, scores 56 %).
    t, s, d, labels, r = (tmp_path / n for n in ("t.h5", "s.h5", "d.h5", "l.h5", "r.json"))
    run_cli("train-teacher", "--data", DIGITS, "--arch", "convnet3", "--seed", "0", "--epochs", "15", "--out", t, *FAST)
    run_cli("extract-stats", "--teacher", t, "--data", DIGITS, "--out", s, *FAST)
    run_cli("distill", "--teacher", t, "--stats", s, "--shard", "i0-10_call", "--iterations", "250", "--out", d, *FAST)
    run_cli("relabel", "--images", d, "--teacher", t, "--epochs", "150", "--out", labels, *FAST)
    run_cli(
        "evaluate",
        "--images",
        d,
        "--labels",
        labels,
        "--data",
        DIGITS,
        "--student",
        "convnet3",
        "--seed",
        "0",
        "--epochs",
        "150",
        "--out",
        r,
        *FAST,
    )
    result = json.loads(r.read_text())
    assert result["top1"] >= 0.90, result
