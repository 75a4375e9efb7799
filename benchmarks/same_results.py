"""Do two versions of the code compute the same artifacts? Every stage on digits, fp32 on the CPU, compared bit for bit.

Usage (repo root, inside the venv):  python benchmarks/same_results.py --old REV
Runs the same stage commands (teacher training, statistics, D3S with several minibatches and
with two teachers, SRe2L, dense and top-k soft labels, soft / hard / top-k students, the full
student in soft and hard mode) with git REV's code (a temporary worktree, first on PYTHONPATH)
and with the current code, then compares every HDF5 dataset and attribute (provenance, times
and code versions aside) and every result's accuracy. Prints each difference and the count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIGITS = json.dumps({"name": "digits", "source": "digits", "hflip": False, "crop_scale": [0.7, 1.0]})
DIGITS_FLIP = json.dumps({"name": "digits", "source": "digits", "hflip": True, "crop_scale": [0.7, 1.0]})
IGNORED_ATTRS = {"created_utc", "code_version", "inputs", "config"}  # config: compared key by key below


def commands(o: Path) -> list[list[str]]:
    t, t1, s, s1 = o / "teacher.h5", o / "teacher1.h5", o / "stats.h5", o / "stats1.h5"
    return [
        ["train-teacher", "--data", DIGITS, "--arch", "convnet3_w32", "--seed", "0", "--epochs", "2", "--out", t],
        [
            "train-teacher",
            "--data",
            DIGITS_FLIP,
            "--arch",
            "convnet3_w32",
            "--seed",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "100",
            "--out",
            t1,
        ],
        ["extract-stats", "--teacher", t, "--data", DIGITS, "--out", s],
        ["extract-stats", "--teacher", t1, "--data", DIGITS_FLIP, "--out", s1],
        [
            "distill",
            "--teacher",
            t,
            "--stats",
            s,
            "--shard",
            "i0-2_call",
            "--batch-size",
            "7",
            "--iterations",
            "20",
            "--out",
            o / "d3s.h5",
        ],
        [
            "distill",
            "--teacher",
            t,
            "--stats",
            s,
            "--shard",
            "i0-2_call",
            "--iterations",
            "20",
            "--jitter",
            "0",
            "--out",
            o / "d3s_nojitter.h5",
        ],
        [
            "distill",
            "--teacher",
            t,
            "--teacher",
            t1,
            "--stats",
            s,
            "--stats",
            s1,
            "--teacher-mode",
            "round_robin",
            "--shard",
            "i0-1_call",
            "--iterations",
            "10",
            "--out",
            o / "d3s_two_teachers.h5",
        ],
        [
            "distill",
            "--teacher",
            t,
            "--method",
            "sre2l",
            "--shard",
            "i0-2_call",
            "--batch-size",
            "7",
            "--iterations",
            "20",
            "--out",
            o / "sre2l.h5",
        ],
        [
            "relabel",
            "--images",
            o / "d3s.h5",
            "--teacher",
            t,
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--out",
            o / "labels.h5",
        ],
        [
            "relabel",
            "--images",
            o / "d3s.h5",
            "--teacher",
            t,
            "--teacher",
            t1,
            "--epochs",
            "3",
            "--top-k",
            "3",
            "--out",
            o / "labels_topk.h5",
        ],
        [
            "evaluate",
            "--images",
            o / "d3s.h5",
            "--labels",
            o / "labels.h5",
            "--data",
            DIGITS,
            "--student",
            "convnet3_w32",
            "--epochs",
            "4",
            "--batch-size",
            "8",
            "--out",
            o / "eval_soft.json",
        ],
        [
            "evaluate",
            "--images",
            o / "d3s.h5",
            "--labels",
            o / "labels_topk.h5",
            "--data",
            DIGITS,
            "--student",
            "convnet3_w32",
            "--epochs",
            "2",
            "--out",
            o / "eval_topk.json",
        ],
        [
            "evaluate",
            "--images",
            o / "d3s.h5",
            "--data",
            DIGITS,
            "--student",
            "convnet3_w32",
            "--epochs",
            "3",
            "--label-mode",
            "hard",
            "--batch-size",
            "8",
            "--out",
            o / "eval_hard.json",
        ],
        [
            "evaluate-full",
            "--data",
            DIGITS,
            "--teacher",
            t,
            "--student",
            "convnet3_w32",
            "--full-epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            o / "full.json",
        ],
        [
            "evaluate-full",
            "--data",
            DIGITS,
            "--teacher",
            t,
            "--student",
            "convnet3_w32",
            "--full-epochs",
            "1",
            "--label-mode",
            "hard",
            "--out",
            o / "full_hard.json",
        ],
    ]


def produce(tree: Path, out: Path) -> None:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    where = subprocess.run(
        [sys.executable, "-c", "import d3s; print(d3s.__file__)"],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(where).is_relative_to(tree):
        raise SystemExit(f"the d3s package for {tree} resolves to {where}")
    for cmd in commands(out):
        # cwd outside the repository: `python -m` puts the working directory first on sys.path
        subprocess.run(
            [sys.executable, "-m", "d3s", *map(str, cmd), "--device", "cpu", "--threads", "2"],
            check=True,
            env=env,
            capture_output=True,
            cwd=out,
        )


def differences(a: Path, b: Path) -> list[str]:
    found = []
    for fa in sorted(a.glob("*.h5")):
        with h5py.File(fa) as x, h5py.File(b / fa.name) as y:

            def visit(name, obj, fa=fa, y=y):
                if isinstance(obj, h5py.Dataset) and not np.array_equal(
                    obj[()], y[name][()], equal_nan=obj.dtype.kind == "f"
                ):
                    found.append(f"{fa.name}: dataset {name}")

            x.visititems(visit)
            for key in set(x.attrs) - IGNORED_ATTRS:
                if key not in y.attrs or not np.array_equal(np.asarray(x.attrs[key]), np.asarray(y.attrs[key])):
                    found.append(f"{fa.name}: attribute {key}")
            old_cfg, new_cfg = json.loads(x.attrs.get("config", "{}")), json.loads(y.attrs.get("config", "{}"))
            for key in old_cfg:
                if old_cfg[key] != new_cfg.get(key):
                    found.append(f"{fa.name}: config {key} {old_cfg[key]!r} -> {new_cfg.get(key)!r}")
            added = sorted(set(new_cfg) - set(old_cfg))
            if added:
                print(f"{fa.name}: new config keys {added} (at their defaults: {[new_cfg[k] for k in added]})")
    for fa in sorted(a.glob("*.json")):
        ra, rb = json.loads(fa.read_text()), json.loads((b / fa.name).read_text())
        found += [f"{fa.name}: {k} {ra[k]} -> {rb[k]}" for k in ("top1", "top5") if ra[k] != rb[k]]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, metavar="REV")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="d3s-same-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.old],
            check=True,
            capture_output=True,
        )
        try:
            produce(tree, Path(tmp) / "old")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        produce(REPO, Path(tmp) / "new")
        found = differences(Path(tmp) / "old", Path(tmp) / "new")
        n_files = len(list((Path(tmp) / "new").iterdir()))
    for line in found:
        print("DIFFERENT", line)
    print(f"{n_files} artifacts compared: {len(found)} differences")


if __name__ == "__main__":
    main()
