"""Peak memory of the statistics pass on N vs 10 N streamed training images (it must not grow with N).

Usage (repo root, inside the venv):  python benchmarks/stats_memory.py [--n 2000] [--size 32]
Writes two HDF5 datasets of random 32x32 RGB images (N and 10 N, gzip chunks of 1024, as in
../shared/datasets), imports a randomly initialised ConvNet-3 as the teacher (the pass costs the
same whatever the weights), and runs `d3s extract-stats` on each in a fresh process with the
dataset forced to stream from disk (memory_limit_mb: 0). Prints peak RSS of each and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

from d3s.models import build_model

PEAK_RSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


def write_dataset(path: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for split, count in (("train", n), ("test", 500)):
            ds = f.create_dataset(
                f"{split}/images",
                (count, size, size, 3),
                dtype=np.uint8,
                chunks=(min(1024, count), size, size, 3),
                compression="gzip",
            )
            for start in range(0, count, 1024):  # written in chunks: the writer is not what is measured
                stop = min(start + 1024, count)
                ds[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
            f[f"{split}/labels"] = np.arange(count) % 10
        f.attrs["classes"] = [str(i) for i in range(10)]


def d3s(*args: str) -> list[str]:
    return [sys.executable, "-m", "d3s", *map(str, args)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="d3s-mem-") as tmp:
        tmp = Path(tmp)
        ckpt = tmp / "teacher.safetensors"
        torch.manual_seed(0)
        save_file(build_model("convnet3", 10, 3, args.size).state_dict(), str(ckpt))
        rows = []
        for n in (args.n, 10 * args.n):
            data = tmp / f"d{n}.h5"
            write_dataset(data, n, args.size)
            spec = json.dumps(
                {
                    "name": f"random{n}",
                    "source": "hdf5",
                    "path": str(data),
                    "memory_limit_mb": 0,
                    "mean": [0.5] * 3,
                    "std": [0.29] * 3,
                }
            )
            teacher = tmp / f"t{n}.h5"
            subprocess.run(
                d3s(
                    "import-teacher",
                    "--data",
                    spec,
                    "--arch",
                    "convnet3",
                    "--checkpoint",
                    ckpt,
                    "--out",
                    teacher,
                    "--device",
                    "cpu",
                    "--threads",
                    "2",
                ),
                check=True,
                capture_output=True,
            )
            t0 = time.perf_counter()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PEAK_RSS,
                    *d3s(
                        "extract-stats",
                        "--teacher",
                        teacher,
                        "--data",
                        spec,
                        "--out",
                        tmp / f"s{n}.h5",
                        "--batch-size",
                        "256",
                        "--device",
                        "cpu",
                        "--threads",
                        "2",
                    ),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - t0
            rows.append((n, int(out.stdout.split()[-1]) / 1024, seconds))
        for n, mb, s in rows:
            print(
                f"statistics pass over {n:>7} images: peak RSS {mb:7.1f} MB, {s:6.1f} s ({n / s:7.0f} img/s incl. start-up)"
            )
        print(f"peak RSS ratio (10x images / 1x): {rows[1][1] / rows[0][1]:.3f}")


if __name__ == "__main__":
    main()
