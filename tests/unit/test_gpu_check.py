"""benchmarks/gpu_check.py runs end to end at a tiny size on the CPU (on a GPU it is the issue-10 check)."""

from __future__ import annotations

import json
import subprocess
import sys

from ..conftest import REPO


def test_gpu_check_runs_on_the_cpu_and_reports_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())["figures"][0]
    for key in (
        "train_fp32_img_s",
        "train_bf16_img_s",
        "inference_img_s",
        "stats_img_s",
        "plain_fwd_bwd_ms",
        "d3s_step_fp32_ms",
        "d3s_step_bf16_ms",
        "sre2l_step_fp32_ms",
        "relabel_fp32_img_s",
        "relabel_bf16_img_s",
    ):
        assert figures[key] > 0, key
    assert figures["stats_over_inference"] == figures["stats_img_s"] / figures["inference_img_s"]
    assert figures["train_bf16_syncs_per_step"] is None, "no sync count without a GPU"
    for row in ("statistics / inference", "D3S step / plain fwd+bwd", "read-backs per step", "peak GPU memory"):
        assert row in done.stdout
