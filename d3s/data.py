"""Dataset sources: a dataset spec from config becomes train/test splits of uint8 images.

A spec is a small dict (``source`` plus that source's options); adding a dataset is adding a
config entry. Every split yields ``(uint8 tensor [C, H, W], int label)`` items; resizing,
normalisation and augmentation happen later on whole batches (see ``augment``), on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from .errors import D3SError

SOURCES = ("digits", "hdf5")


@dataclass(frozen=True)
class DatasetSpec:
    """What the config says about one dataset (see config/schema/config.schema.yaml)."""

    name: str
    source: str
    path: str | None = None
    image_size: int | None = None  # resize to this many pixels a side; None keeps the native size
    hflip: bool = True  # horizontal flips are label-preserving (not for digits)
    crop_scale: tuple[float, float] = (0.5, 1.0)  # random-resized-crop area range for real-data training
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    test_fraction: float = 0.2  # digits only: it ships without a test split
    split_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "dataset spec") -> "DatasetSpec":
        d = dict(d)
        if "source" not in d:
            raise D3SError(f"{where}: missing key 'source' (one of {', '.join(SOURCES)})")
        if d["source"] not in SOURCES:
            raise D3SError(f"{where}: source {d['source']!r} is not one of {', '.join(SOURCES)}")
        if d["source"] == "hdf5" and not d.get("path"):
            raise D3SError(f"{where}: source 'hdf5' needs a 'path' to the .h5 file")
        known = set(cls.__dataclass_fields__) - {"extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        kwargs.setdefault("name", d.pop("name", kwargs.get("source")))
        for key in ("crop_scale", "mean", "std"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs, extra=d)

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """A spec given on the command line: a YAML/JSON mapping, or the path of a YAML file holding one."""
        where = "--data"
        if text and Path(text).is_file():
            where = text
            text = Path(text).read_text()
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise D3SError(f"{where}: not valid YAML/JSON ({e})") from None
        if not isinstance(d, dict):
            raise D3SError(f"{where}: expected a mapping like '{{source: digits}}', got {text!r}")
        return cls.from_dict(d, where)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        d.update(self.extra)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


class ArrayImageDataset(Dataset):
    """Images held as one uint8 array [N, H, W, C] with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N,C,H,W view
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    train: Dataset
    test: Dataset
    classes: list[str]
    channels: int
    native_size: int

    @property
    def image_size(self) -> int:
        return self.spec.image_size or self.native_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_dataset(spec: DatasetSpec) -> LoadedDataset:
    loader = {"digits": _load_digits, "hdf5": _load_hdf5}[spec.source]
    train_x, train_y, test_x, test_y, classes = loader(spec)
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise D3SError(
                f"{spec.path or spec.source}: {split} label {int(y.max() if y.max() >= len(classes) else y.min())} "
                f"is outside the class range 0..{len(classes) - 1}"
            )
    return LoadedDataset(
        spec=spec,
        train=ArrayImageDataset(train_x, train_y),
        test=ArrayImageDataset(test_x, test_y),
        classes=classes,
        channels=train_x.shape[3],
        native_size=train_x.shape[1],
    )


def _load_digits(spec: DatasetSpec):
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), split per class with a seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # N,8,8,1
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(spec.split_seed)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test_idx.extend(rng.choice(idx, size=int(round(len(idx) * spec.test_fraction)), replace=False))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.asarray(test_idx, dtype=np.int64)] = True
    classes = [str(int(c)) for c in bunch.target_names]
    return images[~is_test], labels[~is_test], images[is_test], labels[is_test], classes


def _load_hdf5(spec: DatasetSpec):
    """The layout of ../shared/datasets/*.h5: train/images uint8 [N,H,W,C], train/labels, test/..., attr classes."""
    import h5py

    path = Path(spec.path)
    if not path.is_file():
        raise D3SError(f"{path}: dataset file not found (dataset '{spec.name}', key 'path')")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise D3SError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        for key in ("train/images", "train/labels", "test/images", "test/labels"):
            if key not in f:
                raise D3SError(f"{path}: missing dataset '{key}' (expected train/ and test/ images + labels)")
        if "classes" not in f.attrs:
            raise D3SError(f"{path}: missing attribute 'classes' (class names in label order)")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in f.attrs["classes"]]
        arrays = [f[k][()] for k in ("train/images", "train/labels", "test/images", "test/labels")]
    for key, a in zip(("train/images", "test/images"), (arrays[0], arrays[2])):
        if a.dtype != np.uint8 or a.ndim != 4:
            raise D3SError(f"{path}: '{key}' must be uint8 [N, H, W, C], got {a.dtype} {list(a.shape)}")
    return arrays[0], arrays[1].astype(np.int64), arrays[2], arrays[3].astype(np.int64), classes


def channel_moments(dataset: Dataset, batch_size: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 image dataset in [0, 1] units, streamed in batches."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    n, s, ss = 0, None, None
    for x, _ in loader:
        x = x.double().div_(255.0)
        s = x.sum((0, 2, 3)) if s is None else s + x.sum((0, 2, 3))
        ss = (x * x).sum((0, 2, 3)) if ss is None else ss + (x * x).sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (ss / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
