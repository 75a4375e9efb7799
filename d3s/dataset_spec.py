"""What the config says about one dataset: its keys, declared once, and their parsing and checks.

Each key of a dataset entry is a field of `DatasetSpec`, declared with `hparams.hparam`: type,
default, description and bounds. `d3s.settings.dataset_schema()` renders them as the config
schema's `$defs/dataset`, so the spec the stages parse and the schema the workflow validates with cannot
drift apart. A field whose default is None has no default in the schema (the stages treat
"unset" specially: native size, computed normalisation, ...); a field without a default is
required. `name` is not a key of the entry: it is the entry's key in `datasets`.

Torch-free, so the command line and the workflow can parse and check specs without torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import D3SError
from .hparams import hparam
from .sources import get_source, source_names, sources_description

TORCHVISION_DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST")


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of the config's `datasets` (fields in the schema's order)."""

    name: str
    source: str = hparam(MISSING, sources_description(), choices=source_names())
    path: str | None = hparam(None, "hdf5: path of the .h5 file (relative to the working directory or absolute).")
    memory_limit_mb: int = hparam(
        2048,
        "hdf5: a split up to this many MB is loaded into memory, a larger one is streamed from disk chunk by chunk.",
        minimum=0,
    )
    root: str | None = hparam(None, "torchvision / imagefolder: the dataset folder.")
    torchvision_name: str | None = hparam(
        None, "torchvision: which dataset class reads root.", choices=TORCHVISION_DATASETS
    )
    download: bool = hparam(False, "torchvision: download into root when missing (only where the machine has network).")
    train_dir: str = hparam("train", "imagefolder: training folder under root, one sub-folder per class.")
    val_dir: str = hparam(
        "val",
        "imagefolder: validation folder under root: class sub-folders, Tiny-ImageNet's "
        "images/ + val_annotations.txt, or flat images with val_labels.",
    )
    val_labels: str | None = hparam(
        None, "imagefolder: label file for a flat validation folder, lines '<file name> <class name or index>'."
    )
    class_list: str | None = hparam(
        None, "imagefolder: file with one class folder name per line, in label order (default: sorted folder names)."
    )
    channels: int | None = hparam(None, "imagefolder: 1 decodes grayscale, 3 RGB (default 3).", choices=(1, 3))
    image_size: int | None = hparam(
        None,
        "Resize images to this side length (imagefolder: shorter side then centre "
        "crop; required there); default: native size.",
        minimum=4,
    )
    eval_resize: int | None = hparam(
        None,
        "imagefolder: test images are Resize(eval_resize) (shorter side) -> CenterCrop(image_size), the protocol "
        "of torchvision's weights, SRe2L, CDA and DD-Ranking (256 -> 224 for ImageNet); training images are "
        "stored at eval_resize x eval_resize so random-resized crops see the whole stored image. Default: both "
        "resized to image_size (shorter side, centre crop).",
        minimum=4,
    )
    pack: bool | None = hparam(
        None,
        "imagefolder / torchvision: pack the source once into one HDF5 file (see `prepare`) that every stage "
        "reads, instead of listing and decoding the files in every job. Default: on for an imagefolder source "
        "that declares num_classes >= 100.",
    )
    hflip: bool = hparam(True, "Whether horizontal flips preserve labels (augmentation).")
    crop_scale: tuple[float, float] = hparam(
        (0.5, 1.0),
        "Random-resized-crop area range for teacher training.",
        schema={"items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "minItems": 2, "maxItems": 2},
    )
    mean: tuple[float, ...] | None = hparam(
        None, "Per-channel normalisation mean in [0, 1] units; default: computed from the training set."
    )
    std: tuple[float, ...] | None = hparam(
        None,
        "Per-channel normalisation std; default: computed from the training set.",
        schema={"items": {"type": "number", "exclusiveMinimum": 0}},
    )
    test_fraction: float = hparam(
        0.2, "digits: fraction of each class held out as the test set.", exclusive_minimum=0, exclusive_maximum=1
    )
    split_seed: int = hparam(
        0, "Seed of the validation split (every source) and of digits' train/test split.", minimum=0
    )
    val_per_class: int = hparam(
        0,
        "Training images per class held out as the validation split, chosen with split_seed. No stage trains on "
        "them or selects from them (teachers, statistics, coresets, full); every student reports its validation "
        "top-1 beside its test top-1, and sweeps choose their variant on it. 0: no validation split (then no "
        "sweep).",
        minimum=0,
    )
    num_classes: int | None = hparam(
        None,
        "Number of classes; needed only to plan class-block shards "
        "(classes_per_shard) before the data is read. Checked against the data.",
        minimum=2,
    )

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "dataset spec") -> DatasetSpec:
        d = dict(d)
        if d.get("source") is None:
            raise D3SError(f"{where}: missing key 'source' (one of {', '.join(source_names())})")
        source = get_source(d["source"], where)
        for key in source.needs:
            if not d.get(key):
                raise D3SError(f"{where}: source '{source.name}' needs the key '{key}'")
        if d.get("eval_resize") is not None and not source.decodes_files:
            raise D3SError(
                f"{where}: eval_resize applies to imagefolder sources (decoded images); "
                f"source '{source.name}' has fixed-size images"
            )
        if d.get("eval_resize") is not None and d.get("image_size") and d["eval_resize"] < d["image_size"]:
            raise D3SError(
                f"{where}: eval_resize {d['eval_resize']} is smaller than image_size {d['image_size']} "
                "(the test crop must fit inside the resized image)"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in source.needs:  # a needed key with a closed set of values (torchvision_name)
            choices = fields[key].metadata.get("choices")
            if choices and d[key] not in choices:
                raise D3SError(f"{where}: {key} {d[key]!r} is not one of {', '.join(map(str, choices))}")
        kwargs = {k: d.pop(k) for k in list(d) if k in fields}
        kwargs.setdefault("name", kwargs.get("source"))
        for key in ("crop_scale", "mean", "std"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        if d:
            raise D3SError(f"{where}: unknown key(s) {', '.join(sorted(d))} (known: {', '.join(sorted(fields))})")
        return cls(**kwargs)

    @classmethod
    def parse(cls, text: str) -> DatasetSpec:
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
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if v is not None}
