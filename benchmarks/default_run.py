"""Wall time of the embedded default run (`snakemake --cores all`), each stage's share, and a no-op rerun.

Usage (from the repository root, inside the venv):
    python benchmarks/default_run.py [--cores N]
    python benchmarks/default_run.py --old REV     # also the same run with the code of git REV, and
                                                   # the old / new ratio of each stage's job time
Runs in fresh temporary directories with a copy of config/, so results/ here is untouched.
Stage shares come from Snakemake's per-job `benchmark:` files (seconds of each job; jobs of one
stage may overlap when they run in parallel, so shares are of summed job time, not wall time).
With --old, REV's code runs from a temporary git worktree (its Snakefile, and its d3s package
first on PYTHONPATH), then the current code, one after the other in the same session.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(tree: Path, workdir: Path, cores: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(tree / "Snakefile"),
            "--directory",
            str(workdir),
            "--cores",
            cores,
            "--quiet",
            "all",
        ],
        check=True,
        env=env,
    )
    return time.perf_counter() - t0


def measure(tree: Path, cores: str, noop: bool = True) -> dict:
    """One default run of the code in `tree`: wall time, no-op rerun, job seconds per stage, summary."""
    env = {**os.environ, "PYTHONPATH": str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with tempfile.TemporaryDirectory(prefix="d3s-bench-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(tree / "config", workdir / "config")
        wall = run(tree, workdir, cores, env)
        rerun = run(tree, workdir, cores, env) if noop else None
        per_stage: dict[str, float] = defaultdict(float)
        jobs: dict[str, int] = defaultdict(int)
        for f in (workdir / "logs" / "bench").rglob("*.tsv"):
            stage = f.relative_to(workdir / "logs" / "bench").parts[0]
            with f.open() as fh:
                per_stage[stage] += float(next(csv.DictReader(fh, delimiter="\t"))["s"])
            jobs[stage] += 1
        summary = (workdir / "results/digits/summary.md").read_text()
    return {"wall": wall, "noop": rerun, "stages": dict(per_stage), "jobs": dict(jobs), "summary": summary}


def report(m: dict, cores: str) -> None:
    total = sum(m["stages"].values())
    print(f"default run wall time: {m['wall']:.1f} s  (cores={cores})")
    print(f"no-op rerun wall time: {m['noop']:.1f} s")
    print(f"{'stage':<18}{'jobs':>5}{'job s':>9}{'share':>8}")
    for stage in sorted(m["stages"], key=m["stages"].get, reverse=True):
        print(f"{stage:<18}{m['jobs'][stage]:>5}{m['stages'][stage]:>9.1f}{100 * m['stages'][stage] / total:>7.1f}%")
    print(f"{'(sum of job time)':<23}{total:>9.1f}")
    print()
    print(m["summary"])


def compare(old: dict, new: dict, rev: str) -> None:
    print(f"\nold ({rev}) against new: job seconds per stage")
    print(f"{'stage':<18}{'old s':>9}{'new s':>9}{'old/new':>9}")
    for stage in sorted(new["stages"], key=new["stages"].get, reverse=True):
        o, n = old["stages"].get(stage, float("nan")), new["stages"][stage]
        print(f"{stage:<18}{o:>9.1f}{n:>9.1f}{o / n:>9.2f}")
    o, n = sum(old["stages"].values()), sum(new["stages"].values())
    print(f"{'(all jobs)':<18}{o:>9.1f}{n:>9.1f}{o / n:>9.2f}")
    print(f"{'(wall)':<18}{old['wall']:>9.1f}{new['wall']:>9.1f}{old['wall'] / new['wall']:>9.2f}")
    same = old["summary"] == new["summary"]
    print(f"\nresults table {'identical' if same else 'DIFFERENT'} between old and new")
    if not same:
        print(old["summary"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--old", default=None, metavar="REV", help="also run git REV's code and compare stage times")
    args = ap.parse_args()
    if args.old is None:
        report(measure(REPO, args.cores), args.cores)
        return
    with tempfile.TemporaryDirectory(prefix="d3s-old-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.old],
            check=True,
            capture_output=True,
        )
        try:
            old = measure(tree, args.cores)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    new = measure(REPO, args.cores)
    report(new, args.cores)
    compare(old, new, args.old)


if __name__ == "__main__":
    main()
