"""The soft-label artifact ('labels'): per label epoch and image, a view (box, flip) and the teachers' logits.

Dense labels are `logits` [epochs, N, C] fp16. With top-k compression (`top_k` > 0) each view keeps
its k largest logits (`topk_logits` fp16, `topk_classes`) and the log-sum-exp of the others
(`rest_logsumexp`); a reader sees logits whose softmax keeps those k probabilities exactly and
spreads the remaining mass evenly over the other classes (FKD's label compression). Boxes are
`cx,cy,w,h` (centre in [-1, 1], size as a fraction of the side). `images_sha256` ties the labels
to the images they were made for.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import D3SError
from ..hparams import RelabelParams
from ..runtime import to_device
from . import check_same_classes, open_artifact, read_classes, write_provenance
from .images import SyntheticSet
from .teacher import Teacher


def top_k_logits(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's k largest logits, their classes, and the log-sum-exp of the row's other logits."""
    values, classes = logits.topk(k, dim=1)
    rest = logits.scatter(1, classes, float("-inf")).logsumexp(dim=1)
    return values, classes, rest


def dense_logits(values: torch.Tensor, classes: torch.Tensor, rest: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose softmax has the top-k probabilities of `top_k_logits`' input exactly and the rest
    of the mass spread evenly over the other num_classes - k classes."""
    k = values.shape[1]
    fill = rest - math.log(num_classes - k)  # exp(fill) * (C - k) = exp(rest): the other classes' total
    out = fill[:, None].expand(len(values), num_classes).clone()
    return out.scatter_(1, classes, values)


def packed_epoch(n: int, num_classes: int, k: int, device) -> torch.Tensor:
    """An empty buffer for one label epoch's rows as `pack_logits` makes them."""
    return torch.empty(n, 2 * k + 1 if k else num_classes, dtype=torch.float32 if k else torch.float16, device=device)


def pack_logits(logits: torch.Tensor, k: int) -> torch.Tensor:
    """A batch's logits as stored: fp16, or with top-k one float32 row per image of the k values
    (fp16-rounded), their class ids (exact in float32 below 2**24) and the rest's log-sum-exp."""
    if not k:
        return logits.half()
    values, classes, rest = top_k_logits(logits, k)
    return torch.cat([values.half().float(), classes.float(), rest[:, None]], 1)


def images_digest(images: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(images))).hexdigest()  # no copy of a large set


def is_labels_file(path: str | Path) -> bool:
    """Whether `path` opens as a soft-label artifact (finished or partly written)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("d3s_kind") == "labels"
    except OSError:
        return False


def _allocated(f: h5py.File, name: str, shape: tuple, dtype) -> h5py.Dataset:
    """A dataset of one chunk per label epoch, all of its space allocated now (and not filled): writing
    it later changes raw data only, so the file's structure is final once flushed."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return f.create_dataset(name, shape, dtype=dtype, chunks=(1, *shape[1:]), dcpl=dcpl, fill_time="never")


class LabelWriter:
    """The soft-label artifact, written one epoch at a time (into atomic_path's temporary file, or a
    partial file that `reopen` continues)."""

    def __init__(
        self,
        path,
        teachers: list[Teacher],
        synthetic_path: str,
        params: RelabelParams,
        seed: int,
        n: int,
        c: int,
        k: int,
        digest: str,
        reopen: bool = False,
    ):
        t0 = teachers[0]
        self.k = k
        if reopen:
            self.f = f = h5py.File(path, "r+")
        else:
            self.f = f = h5py.File(path, "w")
            write_provenance(
                f,
                "labels",
                config=asdict(params),
                seed=seed,
                classes=t0.classes,
                inputs={"images": synthetic_path, "teachers": [t.path for t in teachers]},
            )
            f.attrs.update(
                images_sha256=digest,
                teachers=json.dumps([t.weights_sha256 for t in teachers]),
                epochs=params.epochs,
                n_images=n,
                hflip=t0.hflip,
                image_size=t0.image_size,
                top_k=k,
                box_format="cx,cy,w,h (centre in [-1,1], size as a fraction of the side)",
            )
            e = params.epochs
            _allocated(f, "boxes", (e, n, 4), "f4")
            _allocated(f, "flips", (e, n), "bool")
            if k:
                _allocated(f, "topk_logits", (e, n, k), "f2")
                _allocated(f, "topk_classes", (e, n, k), "u2" if c <= 2**16 else "i4")
                _allocated(f, "rest_logsumexp", (e, n), "f4")
            else:
                _allocated(f, "logits", (e, n, c), "f2")
            f.flush()
        self.boxes, self.flips = f["boxes"], f["flips"]
        if k:
            self.logits, self.classes, self.rest = f["topk_logits"], f["topk_classes"], f["rest_logsumexp"]
        else:
            self.logits = f["logits"]

    def write(self, epoch: int, boxes: np.ndarray, flips: np.ndarray, packed: np.ndarray) -> None:
        """Label epoch `epoch`: its views and its rows as `pack_logits` made them."""
        self.boxes[epoch], self.flips[epoch] = boxes, flips
        if self.k:
            k = self.k
            self.logits[epoch] = packed[:, :k].astype(np.float16)
            self.classes[epoch] = packed[:, k : 2 * k].astype(self.classes.dtype)
            self.rest[epoch] = packed[:, 2 * k]
        else:
            self.logits[epoch] = packed


@dataclass
class EpochLabels:
    """One label epoch's teacher logits, made dense float32 only for the rows a batch indexes."""

    values: torch.Tensor  # [N, C] fp16, or [N, k] with `classes` and `rest`
    num_classes: int
    classes: torch.Tensor | None = None
    rest: torch.Tensor | None = None

    def to(self, device) -> EpochLabels:
        move = lambda t: None if t is None else to_device(t, device)  # noqa: E731
        return EpochLabels(move(self.values), self.num_classes, move(self.classes), move(self.rest))

    def __getitem__(self, rows) -> torch.Tensor:
        if self.classes is None:
            return self.values[rows].float()
        return dense_logits(
            self.values[rows].float(), self.classes[rows].long(), self.rest[rows].float(), self.num_classes
        )


class SoftLabelStore:
    """Reads soft labels one epoch at a time (an epoch slab of [N, C] fp16 is all that is held)."""

    def __init__(self, path: str | Path, synthetic: SyntheticSet, synthetic_path: str):
        self.path = str(path)
        self._f = open_artifact(path, "labels")
        try:
            check_same_classes(synthetic.classes, synthetic_path, read_classes(self._f), self.path)
            if self._f.attrs["images_sha256"] != images_digest(synthetic.images):
                raise D3SError(
                    f"{self.path}: soft labels were made for other images than {synthetic_path}; rerun relabel"
                )
            if int(self._f.attrs["image_size"]) != synthetic.images.shape[1]:
                raise D3SError(
                    f"{self.path}: views of {int(self._f.attrs['image_size'])} px, "
                    f"images of {synthetic.images.shape[1]} px"
                )
        except D3SError:
            self._f.close()
            raise
        self.epochs = int(self._f.attrs["epochs"])
        self.top_k = int(self._f.attrs.get("top_k", 0))
        self.num_classes = len(synthetic.classes)
        self.config = json.loads(self._f.attrs["config"])
        # what identifies these labels beyond their settings (a resumed student must not mix label sets)
        self.identity = {
            "teachers": json.loads(self._f.attrs["teachers"]),
            "seed": int(self._f.attrs["seed"]),
            "created": str(self._f.attrs["created_utc"]),
        }

    def epoch(self, e: int) -> tuple[torch.Tensor, torch.Tensor, EpochLabels]:
        """Boxes, flips and logits of label epoch `e` (cycled when training runs longer); index the
        logits with a batch's rows to get them dense, in float32."""
        e %= self.epochs
        boxes, flips = torch.from_numpy(self._f["boxes"][e]), torch.from_numpy(self._f["flips"][e])
        if not self.top_k:
            return boxes, flips, EpochLabels(torch.from_numpy(self._f["logits"][e]), self.num_classes)
        return (
            boxes,
            flips,
            EpochLabels(
                torch.from_numpy(self._f["topk_logits"][e]),
                self.num_classes,
                torch.from_numpy(self._f["topk_classes"][e].astype(np.int64)),
                torch.from_numpy(self._f["rest_logsumexp"][e]),
            ),
        )

    def close(self) -> None:
        self._f.close()
