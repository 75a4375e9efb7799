"""Wall time of the embedded default run (`snakemake --cores all`), each stage's share, and a no-op rerun.

Usage (from the repository root, inside the venv):  python benchmarks/default_run.py [--cores N]
Runs in a fresh temporary directory with a copy of config/, so results/ here is untouched.
Stage shares come from Snakemake's per-job `benchmark:` files (seconds of each job; jobs of one
stage may overlap when they run in parallel, so shares are of summed job time, not wall time).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(workdir: Path, cores: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
                    "--cores", cores, "--quiet", "all"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", default="all")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="d3s-bench-") as tmp:
        workdir = Path(tmp)
        shutil.copytree(REPO / "config", workdir / "config")
        wall = run(workdir, args.cores)
        noop = run(workdir, args.cores)
        per_stage: dict[str, float] = defaultdict(float)
        jobs: dict[str, int] = defaultdict(int)
        for f in (workdir / "logs" / "bench").rglob("*.tsv"):
            stage = f.relative_to(workdir / "logs" / "bench").parts[0]
            with f.open() as fh:
                per_stage[stage] += float(next(csv.DictReader(fh, delimiter="\t"))["s"])
            jobs[stage] += 1
        total = sum(per_stage.values())
        print(f"default run wall time: {wall:.1f} s  (cores={args.cores})")
        print(f"no-op rerun wall time: {noop:.1f} s")
        print(f"{'stage':<18}{'jobs':>5}{'job s':>9}{'share':>8}")
        for stage in sorted(per_stage, key=per_stage.get, reverse=True):
            print(f"{stage:<18}{jobs[stage]:>5}{per_stage[stage]:>9.1f}{100 * per_stage[stage] / total:>7.1f}%")
        print(f"{'(sum of job time)':<23}{total:>9.1f}")
        print()
        print((workdir / "results/digits/summary.md").read_text())


if __name__ == "__main__":
    main()
