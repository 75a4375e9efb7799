"""Peak resident memory of a command in a fresh process, as the memory benchmarks measure it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

# A wrapper that runs the command and prints its children's peak RSS (KB on Linux): the command's own,
# not this interpreter's.
PEAK_RSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def d3s(*args) -> list[str]:
    """A d3s command line: the console script, as the workflow runs it (else python -m d3s)."""
    exe = Path(sys.executable).with_name("d3s")
    return [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "d3s"]), *map(str, args)]


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) of `cmd` run in a fresh wrapper process, and its wall time; stops on a failure."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, cmd)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(map(str, cmd))}\n{out.stderr[-3000:]}")
    return int(out.stdout.split()[-1]) / 1024, time.perf_counter() - t0
