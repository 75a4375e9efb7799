"""Packing throughput of an ImageNet-shaped JPEG folder, and the statistics pass from the packed file vs the raw folder.

Usage (repo root, inside the venv):
    python benchmarks/pack_throughput.py [--classes 100] [--per-class 10] [--threads 2] [--grain 16] [--keep DIR]

(a) Generates an ImageNet-like folder (tests/imagenet_like.py) of ImageNet-sized JPEGs (about
    500x375 and 375x500, so each decode costs what an ImageNet one does; --grain adds sensor-like
    noise so the files are not the ~13 KB of smooth upscaled crops), then times the whole
    prepare stage, write_index -> pack_part -> merge_packed at image_size 224, eval_resize 256,
    once with threads 1 (the main process decodes) and once with --threads (threads decode
    workers). Prints images/s overall, per core (thread) and per decode process.
(b) Imports a randomly initialised teacher built for 224 px as a teacher artifact (import_teacher
    from a safetensors checkpoint, as for a pretrained one), for timm resnet18 (the real teacher)
    and for the lightest registry model (convnet3_w32, where the model does not hide the data path),
    and times the statistics pass (run_extract_stats: what `d3s extract-stats` runs once the teacher
    is loaded) over the same training images read from the raw folder and from the packed file,
    interleaved in one run, with the same threads (raw: threads - 1 decode workers; packed: streamed
    from disk with threads - 1 reader workers, as a file of ImageNet's size is). Prints img/s, the
    ratio, and how many statistics passes the one-off packing pays for.
Next to wall time, CPU time (this process + its reaped DataLoader workers) per image is printed:
it moves far less than wall time when other jobs share the cores. On a CPU even convnet3_w32's
forward at 224 px (full-resolution feature maps) costs several times a decode, so the data path
shows fully only with --device cuda.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from d3s.dataset_spec import DatasetSpec  # noqa: E402
from d3s.models import build_model  # noqa: E402
from d3s.prepare import merge_packed, pack_part, write_index  # noqa: E402
from d3s.runtime import configure_speed, resolve_device  # noqa: E402
from d3s.stats import run_extract_stats  # noqa: E402
from d3s.teacher import import_teacher, load_teacher  # noqa: E402
from tests.imagenet_like import CIFAR, make_imagenet_like  # noqa: E402

IMAGE_SIZE, EVAL_RESIZE = 224, 256
# (width, height): ImageNet's commonest shapes (its mean image is about 400 x 350)
IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 400))
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MODELS = ("resnet18", "convnet3_w32")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (DataLoader workers, once joined)."""
    return sum(
        getattr(resource.getrusage(who), k)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for k in ("ru_utime", "ru_stime")
    )


def add_grain(root: Path, sigma: float, seed: int = 0) -> None:
    """Re-encode every JPEG with Gaussian grain: upscaled CIFAR crops are smooth (~13 KB files at 500 x 375,
    ImageNet's average ~110 KB), and the entropy-decoding part of a decode scales with the bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for path in sorted(root.rglob("*.JPEG")):
        with Image.open(path) as im:
            a = np.asarray(im, dtype=np.float32)
        a = np.clip(a + rng.normal(0, sigma, a.shape).astype(np.float32), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(path, quality=85)


def pack(spec: DatasetSpec, work: Path, threads: int) -> dict:
    """The prepare stage as the workflow runs it with one part: index, pack, merge; seconds of each."""
    torch.set_num_threads(threads)  # as `d3s pack --threads N` does
    index, part, out = work / f"index_t{threads}.h5", work / f"part_t{threads}.h5", work / f"packed_t{threads}.h5"
    c0, t0 = cpu_seconds(), time.perf_counter()
    counts = write_index(spec, str(index))
    t1 = time.perf_counter()
    result = pack_part(str(index), 0, 1, str(part), threads=threads)
    t2 = time.perf_counter()
    merge_packed([str(part)], str(out))
    t3, c3 = time.perf_counter(), cpu_seconds()
    part.unlink()
    return {
        "path": out,
        "images": counts["train"] + counts["test"],
        "index": t1 - t0,
        "part": t2 - t1,
        "merge": t3 - t2,
        "total": t3 - t0,
        "workers": result["workers"],
        "threads": threads,
        "cpu": c3 - c0,
    }


def make_teacher(arch: str, packed_spec: DatasetSpec, work: Path, threads: int, device: torch.device):
    """A random-init teacher for 224 px written as a teacher artifact by import_teacher (tested on the packed test split)."""
    torch.manual_seed(0)
    with h5py.File(packed_spec.path, "r") as f:
        n_classes = len(f.attrs["classes"])
    ckpt = work / f"{arch}.safetensors"
    save_file(build_model(arch, n_classes, 3, IMAGE_SIZE).state_dict(), str(ckpt))
    out = work / f"teacher_{arch}.h5"
    import_teacher(packed_spec, arch, str(ckpt), str(out), device, threads)
    return load_teacher(out, device)


def layer_means(path: Path) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        return [f["layers"][k]["mean"][()] for k in sorted(f["layers"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--per-class", type=int, default=10, help="training images per class")
    ap.add_argument("--val-per-class", type=int, default=1)
    ap.add_argument(
        "--grain",
        type=float,
        default=16.0,
        help="std of the Gaussian grain added to the JPEGs "
        "(0: the smooth upscaled photos as tests/imagenet_like.py writes them)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=2,
        help="packing is timed with 1 and with this many threads; the statistics passes use this many",
    )
    ap.add_argument("--batch", type=int, default=64, help="statistics pass batch size")
    ap.add_argument("--repeats", type=int, default=1, help="statistics passes per (model, source); median reported")
    ap.add_argument("--models", default=",".join(MODELS), help="teachers of part (b), comma-separated ('': skip (b))")
    ap.add_argument("--device", default="cpu", help="device of the statistics passes: cpu, cuda, auto (as the CLI)")
    ap.add_argument(
        "--keep", type=Path, default=None, help="work in DIR and keep the folder, packed files and artifacts"
    )
    args = ap.parse_args()
    if not CIFAR.exists():
        sys.exit(f"{CIFAR} not found: the ImageNet-like folder is made from its photos")
    work = args.keep or Path(tempfile.mkdtemp(prefix="d3s-pack-"))
    work.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    configure_speed(device)  # as the CLI does (channels-last and cuDNN autotuning on CUDA)
    try:
        t0 = time.perf_counter()
        folder = make_imagenet_like(
            work / "folder",
            classes=args.classes,
            per_class=args.per_class,
            val_per_class=args.val_per_class,
            sizes=IMAGENET_SIZES,
        )
        if args.grain:
            add_grain(work / "folder", args.grain)
        made = time.perf_counter() - t0
        jpeg_mb = sum(p.stat().st_size for p in (work / "folder").rglob("*.JPEG")) / 2**20
        raw = {
            "name": "inlike",
            "source": "imagefolder",
            "root": str(folder.root),
            "val_labels": str(folder.val_labels),
            "class_list": str(folder.class_list),
            "image_size": IMAGE_SIZE,
            "eval_resize": EVAL_RESIZE,
            "num_classes": args.classes,
            "mean": MEAN,
            "std": STD,
        }
        raw_spec = DatasetSpec.from_dict(raw)
        print(
            f"ImageNet-like folder: {args.classes} classes, {folder.n_train} train + {folder.n_val} val JPEGs "
            f"(grain {args.grain:g}, {jpeg_mb / (folder.n_train + folder.n_val) * 1024:.0f} KB each, "
            f"sizes {IMAGENET_SIZES}), made in {made:.1f} s"
        )
        print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads by default, statistics on {device}")

        # (a) packing throughput
        print(
            f"\n(a) prepare stage (write_index + pack_part + merge_packed, 1 part) at image_size {IMAGE_SIZE}, "
            f"eval_resize {EVAL_RESIZE}"
        )
        packs = {}
        for threads in sorted({1, args.threads}):
            p = packs[threads] = pack(raw_spec, work, threads)
            decoders = max(1, p["workers"])
            rate = p["images"] / p["total"]
            print(
                f"  threads {threads} ({p['workers']} decode workers): {p['images']} images in {p['total']:6.1f} s "
                f"(index {p['index']:.2f} s, pack {p['part']:.1f} s, merge {p['merge']:.2f} s): "
                f"{rate:6.1f} img/s overall, {rate / threads:6.1f} img/s per core, "
                f"{p['images'] / p['part'] / decoders:6.1f} img/s per decode process (pack step); "
                f"{p['images'] / p['cpu']:6.1f} img per CPU-second"
            )
        best = min(packs.values(), key=lambda p: p["total"])
        packed_mb = best["path"].stat().st_size / 2**20
        print(
            f"  packed file: {packed_mb:.0f} MB ({packed_mb / best['images'] * 1024:.0f} KB an image, "
            f"uncompressed uint8; JPEG folder {jpeg_mb:.0f} MB)"
        )

        # (b) statistics pass, packed vs raw
        torch.set_num_threads(args.threads)
        packed_spec = DatasetSpec.from_dict(
            {
                "name": "inlike",
                "source": "hdf5",
                "path": str(best["path"]),
                "memory_limit_mb": 0,
                "num_classes": args.classes,
                "mean": MEAN,
                "std": STD,
            }
        )
        if args.models:
            print(
                f"\n(b) statistics pass (run_extract_stats, pooling positions, batch {args.batch}, {args.threads} threads: "
                f"{args.threads - 1} loader workers) over the {folder.n_train} training images at {IMAGE_SIZE} px"
            )
        for arch in filter(None, args.models.split(",")):
            teacher = make_teacher(arch, packed_spec, work, args.threads, device)
            params = sum(p.numel() for p in teacher.model.parameters()) / 1e6
            times, cpu = {"raw": [], "packed": []}, {"raw": [], "packed": []}
            for _ in range(args.repeats):  # interleaved: raw, packed, raw, packed ...
                for source, spec in (("raw", raw_spec), ("packed", packed_spec)):
                    c0, t0 = cpu_seconds(), time.perf_counter()
                    run_extract_stats(
                        teacher,
                        spec,
                        "positions",
                        args.batch,
                        str(work / f"stats_{arch}_{source}.h5"),
                        device,
                        args.threads,
                    )
                    times[source].append(time.perf_counter() - t0)
                    cpu[source].append(cpu_seconds() - c0)
            t_raw, t_packed = statistics.median(times["raw"]), statistics.median(times["packed"])
            diff = max(
                float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
                for a, b in zip(
                    layer_means(work / f"stats_{arch}_raw.h5"), layer_means(work / f"stats_{arch}_packed.h5")
                )
            )
            n = folder.n_train
            print(f"  teacher {arch} ({params:.1f} M parameters):")
            for source, t in (("raw folder ", t_raw), ("packed file", t_packed)):
                key = source.split()[0]
                runs = ", ".join(f"{v:.1f}" for v in times[key])
                print(
                    f"    {source}: {n / t:7.1f} img/s ({t:6.1f} s; runs {runs} s), "
                    f"{1e3 * statistics.median(cpu[key]) / n:6.1f} CPU-ms an image"
                )
            c_raw, c_packed = statistics.median(cpu["raw"]), statistics.median(cpu["packed"])
            print(
                f"    ratio packed / raw: {t_raw / t_packed:.2f}x wall, {c_raw / c_packed:.2f}x CPU   "
                f"(max relative difference of the layer means: {diff:.1e})"
            )
            saved = t_raw - t_packed
            # the pack covers train + test images; a stats pass reads train only: scale the pack to the train share
            pack_train = best["total"] * n / best["images"]
            if saved > 0:
                print(
                    f"    one-off pack ({best['total']:.1f} s for train + test, {pack_train:.1f} s for the train images at "
                    f"threads {best['threads']}) = {pack_train / t_raw:.2f} raw passes; "
                    f"saves {saved:.1f} s a pass, paid for after {pack_train / saved:.2f} statistics passes"
                )
            else:
                print(f"    one-off pack ({pack_train:.1f} s for the train images): no wall-time saving per pass here")
            cpu_saved, pack_cpu = c_raw - c_packed, best["cpu"] * n / best["images"]
            if cpu_saved > 0:
                print(
                    f"    in CPU time: pack {pack_cpu:.1f} CPU-s for the train images, saves {cpu_saved:.1f} CPU-s a pass, "
                    f"paid for after {pack_cpu / cpu_saved:.2f} statistics passes"
                )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
