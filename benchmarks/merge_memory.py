"""Peak memory of `d3s merge` on growing distilled sets (it must not grow with the set: one block, MERGE_BLOCK_BYTES).

Usage (repo root, inside the venv):  python benchmarks/merge_memory.py [--mb 50,200,800] [--shards 4] [--size 224]
For each target size writes a set of uint8 images (--classes classes x IPC, --size px RGB) as
--shards shards split by class blocks (each holds every IPC index of its classes, as distill's
class-block shards do, so each merged block is gathered from every shard), stored as
save_synthetic stores them (gzip, whole-image chunks of about IMAGE_CHUNK_BYTES). Pixels are uniform random: they
do not compress, the honest worst case for file size and for the bytes a block decompresses.
Runs `d3s merge --shard ... --ipc N --out ...` in a fresh process and reports its peak RSS
(getrusage RUSAGE_CHILDREN of a wrapper, as benchmarks/stats_memory.py), next to the same
measure of a process that only imports what the merge imports (the interpreter baseline).
Each set is deleted before the next is written (disk: about twice the largest set).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from _peak_rss import d3s, peak_rss_mb  # noqa: E402

from d3s.artifacts.images import MERGE_BLOCK_BYTES, SyntheticSet, _block_rows, image_chunks, save_synthetic

BASELINE = "import d3s.cli, d3s.artifacts.images"  # what `d3s merge` imports before it reads a byte


def write_set(folder: Path, classes: int, ipc: int, shards: int, size: int, rng) -> list[Path]:
    """Class-block shards of one run, rows in distill's (IPC index, class) order; returns their paths."""
    names = [f"n{i:08d}" for i in range(classes)]
    bounds = np.linspace(0, classes, shards + 1).astype(int)
    paths = []
    for k, (c0, c1) in enumerate(zip(bounds[:-1], bounds[1:])):
        ipc_index, labels = (a.ravel() for a in np.meshgrid(np.arange(ipc), np.arange(c0, c1), indexing="ij"))
        block = f"i0-{ipc}_c{c0}-{c1}"
        s = SyntheticSet(
            images=rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8),
            labels=labels.astype(np.int64),
            ipc_index=ipc_index.astype(np.int64),
            classes=names,
            method="d3s",
            teachers=["abc"],
            norm_mean=[0.485, 0.456, 0.406],
            norm_std=[0.229, 0.224, 0.225],
            hflip=True,
            config={"iterations": 1},
            seed=0,
            loss_curves={block: {"total": rng.random(4)}},
            inputs={"shard": block},
        )
        paths.append(folder / f"shard{k}.h5")
        save_synthetic(paths[-1], s)
        del s
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", default="50,200,800", help="set sizes to measure, MB of uint8 images (comma-separated)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--size", type=int, default=224, help="image side in px (RGB)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one; removed either way)")
    args = ap.parse_args()
    row = args.size * args.size * 3
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="d3s-merge-", dir=args.dir))
    try:
        base, _ = peak_rss_mb([sys.executable, "-c", BASELINE])
        print(
            f"merge block MERGE_BLOCK_BYTES = {MERGE_BLOCK_BYTES / 2**20:.0f} MB; {args.size}x{args.size}x3 uint8 images "
            f"({row / 1024:.0f} KB each), {args.classes} classes, {args.shards} class-block shards, random pixels"
        )
        print(f"interpreter baseline (python -c '{BASELINE}'): peak RSS {base:.1f} MB")
        print(
            f"{'set MB':>8} {'IPC':>4} {'images':>7} {'largest shard MB':>17} {'chunk':>18} {'block MB':>8} "
            f"{'peak RSS MB':>11} {'minus baseline':>14} {'merge s':>8}"
        )
        rows = []
        for target in (float(v) for v in args.mb.split(",")):
            ipc = max(1, round(target * 2**20 / (args.classes * row)))
            folder = work / f"set{ipc}"
            folder.mkdir()
            paths = write_set(folder, args.classes, ipc, args.shards, args.size, rng)
            out = folder / "merged.h5"
            rss, seconds = peak_rss_mb(
                d3s("merge", *[a for p in paths for a in ("--shard", p)], "--ipc", ipc, "--out", out)
            )
            with h5py.File(out, "r") as f:
                images = f["images"]
                n, chunks = len(images), images.chunks
                block = min(_block_rows(images, MERGE_BLOCK_BYTES), n) * row  # rows assembled per write
            set_mb = n * row / 2**20
            largest = max(p.stat().st_size for p in paths) / 2**20
            rows.append((set_mb, rss))
            print(
                f"{set_mb:8.0f} {ipc:4d} {n:7d} {largest:17.0f} {str(chunks):>18} {block / 2**20:8.1f} "
                f"{rss:11.1f} {rss - base:14.1f} {seconds:8.1f}"
            )
            shutil.rmtree(folder)
        (s0, r0), (s1, r1) = rows[0], rows[-1]
        print(
            f"set {s1 / s0:.1f}x larger: peak RSS {r1 / r0:.2f}x, above baseline {(r1 - base) / max(r0 - base, 1e-9):.2f}x "
            f"({r1 - r0:+.1f} MB)"
        )
        # The block is a whole number of chunks (_block_rows): what the chunk layout makes it at ImageNet scale
        for name, n in (
            ("ImageNet-1K IPC 10", 10_000),
            ("ImageNet-1K IPC 50", 50_000),
            ("ImageNet-21K IPC 20", 420_000),
        ):
            chunk = image_chunks((n, args.size, args.size, 3))
            floor = chunk[0] * row
            print(
                f"at {name} ({n * row / 1e9:.1f} GB, {args.size} px): chunk {chunk} ({floor / 2**20:.1f} MB) "
                f"-> block {chunk[0] * max(1, MERGE_BLOCK_BYTES // floor) * row / 2**20:.0f} MB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
