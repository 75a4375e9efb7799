"""Peak host memory of `d3s relabel` and `d3s evaluate` against the distilled set's size, next to the rules' requests.

Usage (repo root, inside the venv):
    python benchmarks/student_memory.py [--sets random:100,random:400,blocky:400] [--size 128] [--classes 10]

rules/common.smk (student_memory) sizes both jobs from the set's uncompressed size, read from the
images file's header: TORCH_MB + 1.5 x the set + on a CPU CPU_ACTIVATION_FACTOR x the largest batch's
fp32 input (relabel: its batch; evaluate: max(its batch, the 512-image test pass)), + the dataset split
for evaluate. Both jobs load the whole set decompressed (load_synthetic), so what they hold follows the
uncompressed size, whatever gzip makes of the file (the first model, 3 x the file, did not: see
benchmarks/README.md). Each set is --classes classes x IPC
uint8 images of --size px RGB, saved with save_synthetic (gzip, whole-image chunks), with pixels of a kind:
  random  uniform noise: does not compress (file ~ uncompressed), the case 3 x file was sized on
  smooth  8x8 noise upsampled bilinearly: smooth, yet gzip (no shuffle/delta filter) gets only ~1.3x
  blocky  8x8 noise upsampled nearest (16 px tiles): gzip compresses it ~20x, the risky case
A random-init convnet teacher (import-teacher from a safetensors file) and a small HDF5 dataset (the test
split evaluate reads) are made once. Each set then runs, as the rules' command lines do (smallest budgets):
  d3s relabel --images SET --teacher T --seed 0 --epochs 1 --batch-size BR --device cpu --threads 2 --out L
  d3s evaluate --images SET --labels L --data SPEC --student S --seed 0 --dataset-name bench --epochs 1
      --batch-size BE --device cpu --threads 2 --resume-dir R --out O
each in a fresh process; peak RSS is getrusage RUSAGE_CHILDREN of a wrapper (as benchmarks/merge_memory.py),
next to the same measure of a process that only imports torch, timm, h5py and the d3s stages (the baseline).
A line per job fits RSS = a + k x uncompressed MB over the sets and gives the uncompressed size at which
attempt 1 stops fitting for each compression ratio seen. Each set is deleted after its runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from _peak_rss import d3s, peak_rss_mb  # noqa: E402

BASELINE = "import torch, timm, h5py, d3s.cli, d3s.relabel, d3s.evaluate"  # what the jobs import before reading data
TORCH_MB = 1500  # rules/common.smk (CPU: no CUDA context term)
CPU_ACTIVATION_FACTOR, TEST_BATCH = 64, 512  # rules/common.smk


def rule_request_mb(uncompressed_mb: float, batch: int, size: int, data_mb: float = 0.0) -> int:
    """What rules/common.smk's student_memory asks for at attempt 1 on a CPU."""
    activations = batch * size * size * 3 * 4 * CPU_ACTIVATION_FACTOR / 2**20
    return math.ceil(TORCH_MB + 1.5 * uncompressed_mb + activations + data_mb)


KINDS = ("random", "smooth", "blocky")


def file_mb(path: Path) -> float:
    return path.stat().st_size / 2**20  # as files_mb in rules/common.smk


def pixels(kind: str, n: int, size: int, rng) -> np.ndarray:
    """n uint8 images [n, size, size, 3] of the given kind, made in blocks."""
    import torch

    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for a in range(0, n, 1024):
        m = min(1024, n - a)
        if kind == "random":
            out[a : a + m] = rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8)
            continue
        low = rng.integers(0, 256, (m, 8, 8, 3), dtype=np.uint8)
        if kind == "blocky":
            out[a : a + m] = low.repeat(size // 8, 1).repeat(size // 8, 2)
        else:
            t = torch.from_numpy(low).permute(0, 3, 1, 2).float()
            up = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
            out[a : a + m] = up.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def write_dataset(path: Path, classes: list[str], size: int, n_train: int, n_test: int, rng) -> None:
    """The hdf5 source layout (train/ and test/ images + labels, attribute classes); the test split is all evaluate reads."""
    with h5py.File(path, "w") as f:
        f.attrs["classes"] = classes
        for split, n in (("train", n_train), ("test", n_test)):
            f.create_dataset(f"{split}/images", data=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
            f.create_dataset(f"{split}/labels", data=(np.arange(n) % len(classes)).astype(np.int64))


def make_teacher(work: Path, arch: str, spec: str, classes: int, size: int) -> Path:
    import torch
    from safetensors.torch import save_file

    from d3s.models import build_model

    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in build_model(arch, classes, 3, size).state_dict().items()}
    save_file(state, str(work / "teacher.safetensors"))
    out = work / "teacher.h5"
    subprocess.run(
        d3s(
            "import-teacher",
            "--data",
            spec,
            "--arch",
            arch,
            "--checkpoint",
            work / "teacher.safetensors",
            "--out",
            out,
            "--device",
            "cpu",
            "--threads",
            "2",
        ),
        check=True,
        capture_output=True,
    )
    return out


def write_set(path: Path, kind: str, target_mb: float, classes: list[str], size: int, teacher_sha: str, rng) -> int:
    from d3s.artifacts.images import SyntheticSet, save_synthetic

    row = size * size * 3
    ipc = max(1, round(target_mb * 2**20 / (len(classes) * row)))
    n = ipc * len(classes)
    s = SyntheticSet(
        images=pixels(kind, n, size, rng),
        labels=(np.arange(n) % len(classes)).astype(np.int64),
        ipc_index=(np.arange(n) // len(classes)).astype(np.int64),
        classes=classes,
        method="d3s",
        teachers=[teacher_sha],
        norm_mean=[0.5] * 3,
        norm_std=[0.25] * 3,
        hflip=True,
        config={"iterations": 1},
        seed=0,
        loss_curves={"all": {"total": np.zeros(4)}},
        inputs={},
    )
    save_synthetic(path, s)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sets",
        default="random:100,random:400,blocky:400",
        help="KIND:MB of uint8 images, comma-separated; KIND is one of " + ", ".join(KINDS),
    )
    ap.add_argument("--size", type=int, default=128, help="image side in px (RGB; a multiple of 8)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--arch", default="convnet3_w32", help="teacher architecture (random init)")
    ap.add_argument("--student", default="convnet3_w32")
    # Small batches by default: on the CPU a batch's activations are host memory too (at 128 px a convnet3_w32
    # forward of 256 images holds ~1 GB), a term that does not grow with the set; small, it leaves the set's term visible.
    ap.add_argument(
        "--relabel-batch", type=int, default=32, help="relabel --batch-size (the workflow's default is 256)"
    )
    ap.add_argument("--eval-batch", type=int, default=32, help="evaluate --batch-size (config/config.yaml: 100)")
    ap.add_argument("--test-images", type=int, default=200, help="images in the dataset's test split")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one; removed either way)")
    args = ap.parse_args()
    sets = [(k, float(mb)) for k, mb in (item.split(":") for item in args.sets.split(","))]
    if any(k not in KINDS for k, _ in sets):
        raise SystemExit(f"--sets: kinds are {', '.join(KINDS)}")
    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(args.classes)]
    row_mb = args.size * args.size * 3 / 2**20
    work = Path(tempfile.mkdtemp(prefix="d3s-student-", dir=args.dir))
    try:
        data = work / "data.h5"
        write_dataset(data, classes, args.size, n_train=2 * args.classes, n_test=args.test_images, rng=rng)
        spec = json.dumps({"name": "bench", "source": "hdf5", "path": str(data), "mean": [0.5] * 3, "std": [0.25] * 3})
        data_mb = file_mb(data)  # data_mb(dataset, 1): the file, when under memory_limit_mb
        teacher = make_teacher(work, args.arch, spec, args.classes, args.size)
        with h5py.File(teacher, "r") as f:
            teacher_sha = str(f.attrs["weights_sha256"])
        base, _ = peak_rss_mb([sys.executable, "-c", BASELINE])
        print(
            f"{args.size}x{args.size}x3 uint8 images ({row_mb * 1024:.0f} KB each), {args.classes} classes; "
            f"teacher {args.arch} (random init, {file_mb(teacher):.1f} MB), student {args.student}; "
            f"--epochs 1, --batch-size {args.relabel_batch} (relabel) / {args.eval_batch} (evaluate), --device cpu --threads 2"
        )
        print(
            f"dataset file (test split {args.test_images} images): {data_mb:.1f} MB; "
            f"interpreter baseline (python -c '{BASELINE}'): peak RSS {base:.1f} MB"
        )
        print(
            f"rule: relabel {TORCH_MB} + 1.5 x set + {CPU_ACTIVATION_FACTOR} x batch input; evaluate the same with "
            f"batch max(batch, {TEST_BATCH}) + data split (attempt 1, CPU)"
        )
        print(
            f"{'kind':>7} {'images':>6} {'uncomp MB':>9} {'file MB':>8} {'gzip x':>6} {'job':>8} {'peak RSS':>8} "
            f"{'-base':>7} {'/uncomp':>7} {'/file':>6} {'rule MB':>8} {'fits':>4} {'slack MB':>8} {'s':>5}"
        )
        rows = []
        for i, (kind, target) in enumerate(sets):
            folder = work / f"set{i}"
            folder.mkdir()
            images, labels = folder / "images.h5", folder / "labels.h5"
            n = write_set(images, kind, target, classes, args.size, teacher_sha, rng)
            unc, fmb = n * row_mb, file_mb(images)
            jobs = {
                "relabel": (
                    d3s(
                        "relabel",
                        "--images",
                        images,
                        "--teacher",
                        teacher,
                        "--seed",
                        0,
                        "--epochs",
                        1,
                        "--batch-size",
                        args.relabel_batch,
                        "--device",
                        "cpu",
                        "--threads",
                        2,
                        "--out",
                        labels,
                    ),
                    rule_request_mb(unc, args.relabel_batch, args.size),
                ),
                "evaluate": (
                    d3s(
                        "evaluate",
                        "--images",
                        images,
                        "--labels",
                        labels,
                        "--data",
                        spec,
                        "--student",
                        args.student,
                        "--seed",
                        0,
                        "--dataset-name",
                        "bench",
                        "--epochs",
                        1,
                        "--batch-size",
                        args.eval_batch,
                        "--device",
                        "cpu",
                        "--threads",
                        2,
                        "--resume-dir",
                        folder / "ckpt",
                        "--out",
                        folder / "result.json",
                    ),
                    rule_request_mb(unc, max(args.eval_batch, TEST_BATCH), args.size, data_mb),
                ),
            }
            for job, (cmd, rule) in jobs.items():
                rss, seconds = peak_rss_mb(cmd)
                rule = math.ceil(rule)
                rows.append((kind, job, unc, fmb, rss))
                print(
                    f"{kind:>7} {n:6d} {unc:9.0f} {fmb:8.1f} {unc / fmb:6.1f} {job:>8} {rss:8.0f} {rss - base:7.0f} "
                    f"{(rss - base) / unc:7.2f} {(rss - base) / fmb:6.2f} {rule:8d} {'yes' if rss <= rule else 'NO':>4} "
                    f"{rule - rss:8.0f} {seconds:5.1f}",
                    flush=True,
                )
            shutil.rmtree(folder)
        # RSS = a + k x uncompressed, per job; the request is fixed + 1.5 x uncompressed, whatever the compression
        for job in ("relabel", "evaluate"):
            pts = [(u, r) for _, j, u, _, r in rows if j == job]
            if len({u for u, _ in pts}) < 2:
                continue
            k, a = np.polyfit([u for u, _ in pts], [r for _, r in pts], 1)
            print(
                f"{job}: peak RSS ~ {a:.0f} MB + {k:.2f} x uncompressed MB (fit over {len(pts)} sets; "
                f"the request grows 1.5 x uncompressed MB)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
