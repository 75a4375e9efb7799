"""An ImageNet-shaped image folder made from real photos, for the scale rehearsal and benchmarks.

Layout as ILSVRC-2012 ships: train/<wnid>/<wnid>_<i>.JPEG, a flat val/ folder of
ILSVRC2012_val_<n>.JPEG with a label file ("<file name> <wnid>" lines), and a class list (the
wnid order a pretrained teacher uses: here shuffled, so the class order comes from the list,
not from sorting folders). Images are crops of the CIFAR-10 (JPEG copy) photos, upscaled to
non-square sizes and re-encoded as JPEG, so decoding, resizing and cropping do real work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CIFAR = SHARED / "cifar10_jpeg.h5"
SIZES = ((48, 36), (36, 48), (56, 42), (40, 52), (64, 48))  # (width, height): landscape and portrait


@dataclass
class ImageNetLike:
    root: Path
    classes: list[str]  # label order (the class list's)
    class_list: Path
    val_labels: Path
    n_train: int
    n_val: int


def make_imagenet_like(
    root: Path, classes: int = 1000, per_class: int = 2, val_per_class: int = 1, sizes=SIZES, seed: int = 0
) -> ImageNetLike:
    import h5py
    from PIL import Image

    rng = np.random.default_rng(seed)
    wnids = [f"n{1440764 + 7919 * i:08d}" for i in range(classes)]
    with h5py.File(CIFAR, "r") as f:
        photos = f["train/images"]
        picks = np.sort(rng.choice(len(photos), size=classes * (per_class + val_per_class), replace=False))
        pixels = photos[picks]
    pixels = pixels[rng.permutation(len(pixels))]

    def save(a: np.ndarray, path: Path, k: int) -> None:
        crop = int(rng.integers(24, 33))
        top, left = rng.integers(0, 33 - crop, size=2)
        w, h = sizes[k % len(sizes)]
        im = Image.fromarray(a[top : top + crop, left : left + crop]).resize((w, h), Image.BICUBIC)
        im.save(path, quality=85)

    k = 0
    for wnid in wnids:
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            save(pixels[k], root / "train" / wnid / f"{wnid}_{i}.JPEG", k)
            k += 1
    (root / "val").mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(classes * val_per_class):
        name = f"ILSVRC2012_val_{n + 1:08d}.JPEG"
        save(pixels[k], root / "val" / name, k)
        lines.append(f"{name} {wnids[n % classes]}")
        k += 1
    val_labels = root / "val_labels.txt"
    val_labels.write_text("\n".join(lines) + "\n")
    order = [wnids[i] for i in rng.permutation(classes)]
    class_list = root / "classes.txt"
    class_list.write_text("\n".join(order) + "\n")
    return ImageNetLike(root, order, class_list, val_labels, classes * per_class, classes * val_per_class)
