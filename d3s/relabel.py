"""Stage 4: FKD-style soft labels, indexed by (epoch, image) so any batch size can replay them.

For each epoch and each synthetic image: one seeded random-resized-crop (+ flip) view and the
mean of the teachers' logits on that view, stored fp16. The view parameters are stored too, so
the student sees exactly the pixels the label was computed on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
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
    scale = (params.crop_scale_min, params.crop_scale_max)
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(f, "labels", config=asdict(params), seed=seed, classes=t0.classes,
                         inputs={"images": synthetic_path, "teachers": [t.path for t in teachers]})
        f.attrs.update(images_sha256=images_digest(synthetic.images), teachers=json.dumps([t.weights_sha256 for t in teachers]),
                       epochs=params.epochs, n_images=n, hflip=t0.hflip, image_size=t0.image_size,
                       box_format="cx,cy,w,h (centre in [-1,1], size as a fraction of the side)")
        boxes = f.create_dataset("boxes", (params.epochs, n, 4), dtype="f4", chunks=(1, n, 4))
        flips = f.create_dataset("flips", (params.epochs, n), dtype="bool", chunks=(1, n))
        logits = f.create_dataset("logits", (params.epochs, n, c), dtype="f2", chunks=(1, n, c))
        every = log_every(params.epochs, 10)
        for epoch in progress(range(params.epochs), desc="relabel"):
            g = generator(seed, 20, epoch)  # per-epoch stream: any epoch can be regenerated alone
            b, fl = sample_views(n, scale, t0.hflip, g)
            out_logits = torch.empty(n, c)
            for start in range(0, n, params.batch_size):
                sl = slice(start, start + params.batch_size)
                view = apply_views(normalizer.from_uint8(images[sl]), b[sl], fl[sl], t0.image_size)
                out_logits[sl] = torch.stack([t.model(view).float() for t in teachers]).mean(0).cpu()
            boxes[epoch], flips[epoch], logits[epoch] = b.numpy(), fl.numpy(), out_logits.half().numpy()
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
        self.config = json.loads(self._f.attrs["config"])
        # what identifies these labels beyond their settings (a resumed student must not mix label sets)
        self.identity = {"teachers": json.loads(self._f.attrs["teachers"]), "seed": int(self._f.attrs["seed"]),
                         "created": str(self._f.attrs["created_utc"])}

    def epoch(self, e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes, flips and logits (float32) of label epoch `e` (cycled when training runs longer)."""
        e %= self.epochs
        return (torch.from_numpy(self._f["boxes"][e]), torch.from_numpy(self._f["flips"][e]),
                torch.from_numpy(self._f["logits"][e].astype(np.float32)))

    def close(self) -> None:
        self._f.close()
