"""Shared fixtures: a tiny end-to-end set of artifacts made once per test session with the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from d3s.cli import main

REPO = Path(__file__).resolve().parents[1]
DIGITS = json.dumps({"name": "digits", "source": "digits", "hflip": False, "crop_scale": [0.7, 1.0]})
FAST = ["--device", "cpu", "--threads", "2"]


def run_cli(*args: str, expect_ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if expect_ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Teacher -> stats -> two distillation shards -> merged images -> labels -> one evaluation."""
    d = tmp_path_factory.mktemp("tiny")
    p = {k: d / f"{k}.h5" for k in ("teacher", "stats", "shard0", "shard1", "images", "labels")}
    p["result"] = d / "result.json"
    run_cli(
        "train-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet3_w32",
        "--seed",
        "0",
        "--epochs",
        "3",
        "--out",
        p["teacher"],
        *FAST,
    )
    run_cli("extract-stats", "--teacher", p["teacher"], "--data", DIGITS, "--out", p["stats"], *FAST)
    for i, shard in enumerate(("shard0", "shard1")):
        run_cli(
            "distill",
            "--teacher",
            p["teacher"],
            "--stats",
            p["stats"],
            "--shard",
            f"i{i}-{i + 1}_call",
            "--iterations",
            "15",
            "--out",
            p[shard],
            *FAST,
        )
    run_cli("merge", "--shard", p["shard1"], "--shard", p["shard0"], "--ipc", "2", "--out", p["images"])
    run_cli("relabel", "--images", p["images"], "--teacher", p["teacher"], "--epochs", "3", "--out", p["labels"], *FAST)
    run_cli(
        "evaluate",
        "--images",
        p["images"],
        "--labels",
        p["labels"],
        "--data",
        DIGITS,
        "--student",
        "convnet3_w32",
        "--epochs",
        "3",
        "--out",
        p["result"],
        *FAST,
    )
    return p
