"""Throughput of the statistics pass vs a plain eval-mode forward over the same data, as a ratio.

Usage (repo root, inside the venv):  python benchmarks/stats_throughput.py [--n 5000] [--size 32]
Both loops read the same in-memory uint8 images through the same DataLoader, normalise and
resize them the same way; the statistics pass adds the BN-input hooks and the float64 moment
accumulation. Interleaved, repeated, median reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fixtures import random_teacher  # noqa: E402

from d3s.data import ArrayImageDataset  # noqa: E402
from d3s.stats import extract_stats  # noqa: E402
from d3s.transforms import resize  # noqa: E402


@torch.no_grad()
def plain_forward(teacher, dataset, batch_size, device) -> None:
    normalizer = teacher.normalizer(device)
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        teacher.model(resize(normalizer.from_uint8(x.to(device)), teacher.image_size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher = random_teacher(size=args.size)
    teacher.model.to(device)
    rng = np.random.default_rng(0)
    dataset = ArrayImageDataset(
        rng.integers(0, 256, (args.n, args.size, args.size, 3), dtype=np.uint8), np.zeros(args.n, dtype=np.int64)
    )
    plain, stats = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        plain_forward(teacher, dataset, args.batch, device)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        extract_stats(teacher, dataset, "positions", args.batch, device)
        stats.append(time.perf_counter() - t0)
    p, s = statistics.median(plain), statistics.median(stats)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.n} images {args.size}px, batch {args.batch}")
    print(f"plain eval forward: {args.n / p:8.0f} img/s")
    print(f"statistics pass   : {args.n / s:8.0f} img/s")
    print(f"throughput ratio (statistics / plain forward): {p / s:.3f}")


if __name__ == "__main__":
    main()
