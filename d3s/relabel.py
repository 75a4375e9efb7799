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

import contextlib
import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch

from .artifacts import atomic_path, check_same_classes, open_artifact, read_classes, write_provenance
from .checkpoint import DEFAULT_MINUTES, Checkpointer
from .errors import D3SError
from .hparams import RelabelParams
from .data import ImagesOnDevice
from .distributed import barrier, ranks
from .engine import run_epochs
from .runtime import autocast, generator, log, maybe_compile, prepare_input, prepare_model, to_device
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

    def to(self, device) -> "EpochLabels":
        move = lambda t: None if t is None else to_device(t, device)  # noqa: E731
        return EpochLabels(move(self.values), self.num_classes, move(self.classes), move(self.rest))

    def __getitem__(self, rows) -> torch.Tensor:
        if self.classes is None:
            return self.values[rows].float()
        return dense_logits(self.values[rows].float(), self.classes[rows].long(), self.rest[rows].float(),
                            self.num_classes)


def images_digest(images: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(images))).hexdigest()  # no copy of a large set


def _epoch_views(epoch: int, n: int, params: RelabelParams, hflip: bool, seed: int):
    g = generator(seed, 20, epoch)  # per-epoch stream: any epoch can be made alone, on any rank
    return sample_views(n, (params.crop_scale_min, params.crop_scale_max), hflip, g)


@torch.no_grad()
def generate_soft_labels(
    teachers: list[Teacher],
    synthetic: SyntheticSet,
    synthetic_path: str,
    params: RelabelParams,
    seed: int,
    out: str,
    device: torch.device,
    resume_dir: str | None = None,
    checkpoint_every: int = 0,
    checkpoint_minutes: float = DEFAULT_MINUTES,
) -> None:
    """Write OUT with each label epoch's views and the teachers' mean logits on them.

    The images go to the device once. An epoch's kept labels collect on the device and come
    back in one copy per epoch (packed into one float32 buffer with top-k). With several
    processes the epochs are dealt out round by round (epoch e on rank e mod N) and gathered on
    rank 0, which writes: every epoch has its own view stream, so on the CPU the file is
    bit-identical to a 1-process run's (on GPUs, up to the convolution algorithms each process picks).

    With `resume_dir` the file is written there (PARTIAL) and moved onto OUT at the end. A
    checkpoint, after a round every N label epochs (rounded up to whole rounds) or M minutes
    and on a stop signal, flushes it and records how many rounds it holds: a restart reopens it
    and continues with the next round. Its datasets are allocated when created, so writing a
    round changes only their data, never the file's structure: a kill leaves the file as it
    was at the last flush plus some label data that the restart writes again.
    """
    t0 = teachers[0]
    for t in teachers:
        check_same_classes(synthetic.classes, synthetic_path, t.classes, t.path)
    normalizer = t0.normalizer(device)
    images = ImagesOnDevice(torch.from_numpy(synthetic.images).permute(0, 3, 1, 2), device)
    n, c = len(images), len(t0.classes)
    if params.top_k < 0:
        raise D3SError(f"relabel: top_k must be 0 (keep all logits) or positive, got {params.top_k}")
    k = params.top_k if params.top_k < c else 0
    if params.top_k >= c:
        log.info("relabel: top_k %d >= %d classes: storing all logits", params.top_k, c)
    models = [maybe_compile(prepare_model(t.model, device)) for t in teachers]
    r = ranks()
    digest = images_digest(synthetic.images)
    checkpoint = Checkpointer(resume_dir, {
        "stage": "relabel", "params": asdict(params), "seed": seed, "images": digest, "classes": synthetic.classes,
        "teachers": [[t.weights_sha256, t.mean, t.std, t.image_size, t.hflip] for t in teachers],
        "processes": r.world,  # a checkpoint counts rounds of `processes` label epochs
    }, -(-checkpoint_every // r.world), checkpoint_minutes)
    partial = checkpoint.dir / PARTIAL if checkpoint.enabled else None
    if r.main and partial is not None and (checkpoint.dir / "state.pt").exists() and not _readable(partial):
        log.warning("relabel: %s is missing or unreadable: starting over", partial)
        checkpoint.clear()
    barrier()  # before any rank looks for the checkpoint

    def label_epoch(epoch: int) -> Iterator[None]:
        """Yield once per batch; leaves the epoch's packed labels in `packed` (dense fp16, or top-k float32)."""
        boxes, flips = _epoch_views(epoch, n, params, t0.hflip, seed)
        boxes, flips = to_device(boxes, device), to_device(flips, device)
        for start in range(0, n, params.batch_size):
            sl = slice(start, start + params.batch_size)
            view = prepare_input(apply_views(normalizer.from_uint8(images.take(sl)), boxes[sl], flips[sl], t0.image_size))
            with autocast(device, params.precision):
                batch_logits = torch.stack([m(view).float() for m in models]).mean(0)
            if k:
                values, classes, rest = top_k_logits(batch_logits, k)
                # fp16-rounded values, class ids (exact in float32 below 2**24) and the rest, in one buffer
                packed[sl] = torch.cat([values.half().float(), classes.float(), rest[:, None]], 1)
            else:
                packed[sl] = batch_logits.half()
            yield None

    packed = torch.empty(n, 2 * k + 1 if k else c, dtype=torch.float32 if k else torch.float16, device=device)
    rounds = -(-params.epochs // r.world)
    writer: _LabelWriter | None = None
    resumed = False

    def open_writer() -> None:
        """Rank 0: create the file, or reopen the partial one a checkpoint was made with."""
        nonlocal writer
        if r.main and writer is None:
            if partial is not None:
                checkpoint.dir.mkdir(parents=True, exist_ok=True)
            writer = _LabelWriter(path, teachers, synthetic_path, params, seed, n, c, k, digest, reopen=resumed)

    def snapshot(done_rounds: int) -> dict:
        if writer is not None:
            writer.f.flush()  # the labels of every round done are in the file before the checkpoint says so
        return {"step": done_rounds}

    def restore(state: dict) -> int:
        nonlocal resumed
        resumed = True
        return int(state["step"])

    def round_steps(rnd: int):
        open_writer()
        epoch = rnd * r.world + r.rank
        if epoch < params.epochs:
            yield from label_epoch(epoch)
        else:  # this rank has no epoch in the last round: it still joins the gather
            yield from (None for _ in range(-(-n // params.batch_size)))
        parts = _gather(packed, r)
        if writer is not None:
            for rank, part in enumerate(parts):
                e = rnd * r.world + rank
                if e < params.epochs:
                    writer.write(e, part)

    target = atomic_path(out) if r.main and partial is None else contextlib.nullcontext(partial)
    with target as path:
        try:
            run_epochs("relabel" if r.world == 1 else f"relabel ({r.world} label epochs a round)", rounds,
                       -(-n // params.batch_size), round_steps, device, checkpoint,
                       snapshot if checkpoint.enabled else None, restore, log_lines=10)
            open_writer()  # no round ran (resumed after the last, or no epochs): the file is still made
        finally:
            if writer is not None:
                writer.f.close()
    if r.main and partial is not None:
        with atomic_path(out) as tmp:
            shutil.move(partial, tmp)
    checkpoint.clear()


def _gather(packed: torch.Tensor, r) -> list[np.ndarray]:
    """Every rank's packed epoch on rank 0 (host arrays; one device-to-host copy per epoch)."""
    if r.world == 1:
        return [packed.cpu().numpy()]
    import torch.distributed as dist

    parts = [torch.empty_like(packed) for _ in range(r.world)] if r.main else None
    dist.gather(packed, parts, dst=0)
    return [p.cpu().numpy() for p in parts] if r.main else []


PARTIAL = "labels.partial.h5"  # the artifact being written, in --resume-dir


def _readable(path: Path) -> bool:
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


class _LabelWriter:
    """The soft-label artifact, written one epoch at a time (into atomic_path's temporary file, or the
    partial file in --resume-dir, which `reopen` continues)."""

    def __init__(self, path, teachers, synthetic_path, params: RelabelParams, seed: int, n: int, c: int, k: int,
                 digest: str, reopen: bool = False):
        t0 = teachers[0]
        self.params, self.seed, self.n, self.k, self.hflip = params, seed, n, k, t0.hflip
        if reopen:
            self.f = f = h5py.File(path, "r+")
        else:
            self.f = f = h5py.File(path, "w")
            write_provenance(f, "labels", config=asdict(params), seed=seed, classes=t0.classes,
                             inputs={"images": synthetic_path, "teachers": [t.path for t in teachers]})
            f.attrs.update(images_sha256=digest, teachers=json.dumps([t.weights_sha256 for t in teachers]),
                           epochs=params.epochs, n_images=n, hflip=t0.hflip, image_size=t0.image_size, top_k=k,
                           box_format="cx,cy,w,h (centre in [-1,1], size as a fraction of the side)")
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

    def write(self, epoch: int, packed: np.ndarray) -> None:
        boxes, flips = _epoch_views(epoch, self.n, self.params, self.hflip, self.seed)  # host copies: cheap to redraw
        self.boxes[epoch], self.flips[epoch] = boxes.numpy(), flips.numpy()
        if self.k:
            k = self.k
            self.logits[epoch] = packed[:, :k].astype(np.float16)
            self.classes[epoch] = packed[:, k:2 * k].astype(self.classes.dtype)
            self.rest[epoch] = packed[:, 2 * k]
        else:
            self.logits[epoch] = packed


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
