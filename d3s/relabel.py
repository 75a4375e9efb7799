"""Stage 4: FKD-style soft labels, indexed by (epoch, image) so any batch size can replay them.

For each epoch and each synthetic image: one seeded random-resized-crop (+ flip) view and the
mean of the teachers' logits on that view, stored fp16 (the format: `artifacts.labels`). The view
parameters are stored too, so the student sees exactly the pixels the label was computed on.

Dense labels take epochs x N x C x 2 bytes: 2.9 TB for ImageNet-21K at IPC 10 and 300 epochs.
With `top_k` only each view's k largest logits, their classes and the log-sum-exp of the other
logits are stored.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np
import torch

from .artifacts import atomic_path, check_same_classes
from .artifacts.images import SyntheticSet
from .artifacts.labels import LabelWriter, images_digest, is_labels_file, pack_logits, packed_epoch
from .artifacts.teacher import Teacher
from .checkpoint import CheckpointPlan
from .data import ImagesOnDevice
from .distributed import barrier, ranks
from .engine import run_epochs
from .errors import D3SError
from .hparams import RelabelParams
from .runtime import autocast, generator, log, maybe_compile, prepare_input, prepare_model, to_device
from .transforms import apply_views, sample_views


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
    checkpoints: CheckpointPlan = CheckpointPlan(),
) -> None:
    """Write OUT with each label epoch's views and the teachers' mean logits on them.

    The images go to the device once. An epoch's kept labels collect on the device and come
    back in one copy per epoch (packed into one float32 buffer with top-k). With several
    processes the epochs are dealt out round by round (epoch e on rank e mod N) and gathered on
    rank 0, which writes: every epoch has its own view stream, so on the CPU the file is
    bit-identical to a 1-process run's (on GPUs, up to the convolution algorithms each process picks).

    With a checkpoint directory the file is written there (PARTIAL) and moved onto OUT at the end. A
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
    checkpoint = checkpoints.checkpointer(
        {
            "stage": "relabel",
            "params": asdict(params),
            "seed": seed,
            "images": digest,
            "classes": synthetic.classes,
            "teachers": [[t.weights_sha256, t.mean, t.std, t.image_size, t.hflip] for t in teachers],
            "processes": r.world,  # a checkpoint counts rounds of `processes` label epochs
        },
        every=-(-checkpoints.every // r.world),
    )
    partial = checkpoint.dir / PARTIAL if checkpoint.enabled else None
    if r.main and partial is not None and (checkpoint.dir / "state.pt").exists() and not is_labels_file(partial):
        log.warning("relabel: %s is missing or unreadable: starting over", partial)
        checkpoint.clear()
    barrier()  # before any rank looks for the checkpoint

    def label_epoch(epoch: int) -> Iterator[None]:
        """Yield once per batch; leaves the epoch's packed labels in `packed` (dense fp16, or top-k float32)."""
        boxes, flips = _epoch_views(epoch, n, params, t0.hflip, seed)
        boxes, flips = to_device(boxes, device), to_device(flips, device)
        for start in range(0, n, params.batch_size):
            sl = slice(start, start + params.batch_size)
            view = prepare_input(
                apply_views(normalizer.from_uint8(images.take(sl)), boxes[sl], flips[sl], t0.image_size)
            )
            with autocast(device, params.precision):
                batch_logits = torch.stack([m(view).float() for m in models]).mean(0)
            packed[sl] = pack_logits(batch_logits, k)
            yield None

    packed = packed_epoch(n, c, k, device)
    rounds = -(-params.epochs // r.world)
    writer: LabelWriter | None = None
    resumed = False

    def open_writer() -> None:
        """Rank 0: create the file, or reopen the partial one a checkpoint was made with."""
        nonlocal writer
        if r.main and writer is None:
            if partial is not None:
                checkpoint.dir.mkdir(parents=True, exist_ok=True)
            writer = LabelWriter(path, teachers, synthetic_path, params, seed, n, c, k, digest, reopen=resumed)

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
                    boxes, flips = _epoch_views(e, n, params, t0.hflip, seed)  # host copies: cheap to redraw
                    writer.write(e, boxes.numpy(), flips.numpy(), part)

    target = atomic_path(out) if r.main and partial is None else contextlib.nullcontext(partial)
    with target as path:
        try:
            run_epochs(
                "relabel" if r.world == 1 else f"relabel ({r.world} label epochs a round)",
                rounds,
                -(-n // params.batch_size),
                round_steps,
                device,
                checkpoint,
                snapshot if checkpoint.enabled else None,
                restore,
                log_lines=10,
            )
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
