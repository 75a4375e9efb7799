"""Stage 4: FKD-style soft labels, indexed by (epoch, image) so any batch size can replay them.

For each epoch and each synthetic image: one seeded random-resized-crop (+ flip) view and the
mean of the teachers' logits on that view, stored fp16. The view parameters are stored too, so
the student sees exactly the pixels the label was computed on.

Dense labels take epochs x N x C x 2 bytes: 2.9 TB for ImageNet-21K at IPC 10 and 300 epochs.
With `top_k` only each view's k largest logits, their classes and the log-sum-exp of the other
logits are stored; the student sees logits whose softmax keeps those k probabilities exactly
and spreads the remaining mass evenly over the other classes (FKD's label compression).
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

from .artifacts import atomic_path, check_same_classes, open_artifact, read_classes, write_provenance
from .errors import D3SError
from .hparams import RelabelParams
from .runtime import generator, log, log_every, progress
from .synthetic import SyntheticSet
from .teacher import Teacher
from .transforms import apply_views, sample_views


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


@dataclass
class EpochLabels:
    """One label epoch's teacher logits, made dense float32 only for the rows a batch indexes."""

    values: torch.Tensor  # [N, C] fp16, or [N, k] with `classes` and `rest`
    num_classes: int
    classes: torch.Tensor | None = None
    rest: torch.Tensor | None = None

    def __getitem__(self, rows) -> torch.Tensor:
        if self.classes is None:
            return self.values[rows].float()
        return dense_logits(self.values[rows].float(), self.classes[rows].long(), self.rest[rows].float(),
                            self.num_classes)


def images_digest(images: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(images))).hexdigest()  # no copy of a large set


@torch.no_grad()
def generate_soft_labels(
    teachers: list[Teacher],
    synthetic: SyntheticSet,
    synthetic_path: str,
    params: RelabelParams,
    seed: int,
    out: str,
    device: torch.device,
) -> None:
    t0 = teachers[0]
    for t in teachers:
        check_same_classes(synthetic.classes, synthetic_path, t.classes, t.path)
    normalizer = t0.normalizer(device)
    images = torch.from_numpy(synthetic.images).permute(0, 3, 1, 2)  # uint8 on the host, normalised per batch
    n, c = len(images), len(t0.classes)
    if params.top_k < 0:
        raise D3SError(f"relabel: top_k must be 0 (keep all logits) or positive, got {params.top_k}")
    k = params.top_k if params.top_k < c else 0
    if params.top_k >= c:
        log.info("relabel: top_k %d >= %d classes: storing all logits", params.top_k, c)
    scale = (params.crop_scale_min, params.crop_scale_max)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(f, "labels", config=asdict(params), seed=seed, classes=t0.classes,
                         inputs={"images": synthetic_path, "teachers": [t.path for t in teachers]})
        f.attrs.update(images_sha256=images_digest(synthetic.images), teachers=json.dumps([t.weights_sha256 for t in teachers]),
                       epochs=params.epochs, n_images=n, hflip=t0.hflip, image_size=t0.image_size, top_k=k,
                       box_format="cx,cy,w,h (centre in [-1,1], size as a fraction of the side)")
        boxes = f.create_dataset("boxes", (params.epochs, n, 4), dtype="f4", chunks=(1, n, 4))
        flips = f.create_dataset("flips", (params.epochs, n), dtype="bool", chunks=(1, n))
        if k:
            logits = f.create_dataset("topk_logits", (params.epochs, n, k), dtype="f2", chunks=(1, n, k))
            classes = f.create_dataset("topk_classes", (params.epochs, n, k), chunks=(1, n, k),
                                       dtype="u2" if c <= 2**16 else "i4")
            rest = f.create_dataset("rest_logsumexp", (params.epochs, n), dtype="f4", chunks=(1, n))
        else:
            logits = f.create_dataset("logits", (params.epochs, n, c), dtype="f2", chunks=(1, n, c))
        every = log_every(params.epochs, 10)
        for epoch in progress(range(params.epochs), desc="relabel"):
            g = generator(seed, 20, epoch)  # per-epoch stream: any epoch can be regenerated alone
            b, fl = sample_views(n, scale, t0.hflip, g)
            # one epoch's kept labels only: a dense float epoch would be 38 GB at ImageNet-21K
            kept = torch.empty(n, k or c, dtype=torch.float16)
            kept_classes, kept_rest = (torch.empty(n, k, dtype=torch.int64), torch.empty(n)) if k else (None, None)
            for start in range(0, n, params.batch_size):
                sl = slice(start, start + params.batch_size)
                view = apply_views(normalizer.from_uint8(images[sl]), b[sl], fl[sl], t0.image_size)
                batch_logits = torch.stack([t.model(view).float() for t in teachers]).mean(0).cpu()
                if k:
                    values, kept_classes[sl], kept_rest[sl] = top_k_logits(batch_logits, k)
                    kept[sl] = values.half()
                else:
                    kept[sl] = batch_logits.half()
            boxes[epoch], flips[epoch], logits[epoch] = b.numpy(), fl.numpy(), kept.numpy()
            if k:
                classes[epoch], rest[epoch] = kept_classes.numpy(), kept_rest.numpy()
            if (epoch + 1) % every == 0:
                log.info("relabel: epoch %d/%d", epoch + 1, params.epochs)


class SoftLabelStore:
    """Reads soft labels one epoch at a time (an epoch slab of [N, C] fp16 is all that is held)."""

    def __init__(self, path: str | Path, synthetic: SyntheticSet, synthetic_path: str):
        self.path = str(path)
        self._f = open_artifact(path, "labels")
        try:
            check_same_classes(synthetic.classes, synthetic_path, read_classes(self._f), self.path)
            if self._f.attrs["images_sha256"] != images_digest(synthetic.images):
                raise D3SError(f"{self.path}: soft labels were made for other images than {synthetic_path}; rerun relabel")
            if int(self._f.attrs["image_size"]) != synthetic.images.shape[1]:
                raise D3SError(f"{self.path}: views of {int(self._f.attrs['image_size'])} px, images of {synthetic.images.shape[1]} px")
        except D3SError:
            self._f.close()
            raise
        self.epochs = int(self._f.attrs["epochs"])
        self.top_k = int(self._f.attrs.get("top_k", 0))
        self.num_classes = len(synthetic.classes)
        self.config = json.loads(self._f.attrs["config"])
        # what identifies these labels beyond their settings (a resumed student must not mix label sets)
        self.identity = {"teachers": json.loads(self._f.attrs["teachers"]), "seed": int(self._f.attrs["seed"]),
                         "created": str(self._f.attrs["created_utc"])}

    def epoch(self, e: int) -> tuple[torch.Tensor, torch.Tensor, EpochLabels]:
        """Boxes, flips and logits of label epoch `e` (cycled when training runs longer); index the
        logits with a batch's rows to get them dense, in float32."""
        e %= self.epochs
        boxes, flips = torch.from_numpy(self._f["boxes"][e]), torch.from_numpy(self._f["flips"][e])
        if not self.top_k:
            return boxes, flips, EpochLabels(torch.from_numpy(self._f["logits"][e]), self.num_classes)
        return boxes, flips, EpochLabels(torch.from_numpy(self._f["topk_logits"][e]), self.num_classes,
                                         torch.from_numpy(self._f["topk_classes"][e].astype(np.int64)),
                                         torch.from_numpy(self._f["rest_logsumexp"][e]))

    def close(self) -> None:
        self._f.close()
