"""Stage 2: per-layer Gaussian statistics of a teacher's BatchNorm inputs over the real training set
(written as a statistics artifact, see `artifacts.stats`).

One eval-mode pass per teacher; mean and full covariance per BN layer, accumulated in float64
(memory independent of dataset size). BN inputs are hooked, not outputs: a frozen BN is an
invertible per-channel affine map, so the KL is the same either way, and inputs are never
overwritten by an in-place activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import check_same_classes
from .artifacts.stats import LayerStats, save_stats
from .artifacts.teacher import Teacher
from .bn_inputs import BNInputRecorder
from .checkpoint import Checkpointer, CheckpointPlan
from .data import evaluation_loader, load_dataset
from .dataset_spec import DatasetSpec
from .distributed import Ranks
from .errors import D3SError
from .gaussian import MomentAccumulator, affine_moments
from .runtime import generator, log, log_every, prepare_input, prepare_model, progress, to_device
from .transforms import apply_views, resize, sample_views


class InputConvMoments:
    """The first BN layer's moments through the patches of the image, when a conv maps them to it.

    In most networks the first BN input is conv(image) with nothing in between, so it is linear in
    the image's k x k patches and its moments are exactly (W mu_p + b, W Sigma_p W^T). Accumulating
    the patches' moments (C k^2 = 27 dimensions for RGB 3x3) instead of the BN input's (128 for
    ConvNet-3, 64 for a ResNet stem) cuts the most expensive layer's cost of the pass ~20x.
    """

    def __init__(self, conv: nn.Conv2d, device):
        self.conv = conv
        self.acc = MomentAccumulator(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], device)

    @classmethod
    def find(cls, model: nn.Module, recorder: BNInputRecorder, example: torch.Tensor, device):
        """The conv whose input is the model's input and whose output is the first BN's input, if any."""
        seen = []
        hooks = [
            m.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
            for m in model.modules()
            if isinstance(m, nn.Conv2d)
        ]
        try:
            model(example)
        finally:
            for h in hooks:
                h.remove()
        for conv, inp, out in seen:
            if (
                inp is example
                and out is recorder.inputs[0]
                and conv.groups == 1
                and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple)
            ):
                return cls(conv, device)
        return None

    def update(self, x: torch.Tensor) -> None:
        c = self.conv
        patches = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # [B, C k k, positions]
        self.acc.update_features(patches.unsqueeze(-1), "positions")

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        w = self.conv.weight.detach().double().reshape(self.conv.out_channels, -1).to(self.acc.mean.device)
        b = None if self.conv.bias is None else self.conv.bias.detach().double().to(w.device)
        mean, cov = affine_moments(self.acc.mean, self.acc.covariance(), w, b)
        return mean, cov, self.acc.count


@torch.no_grad()
def extract_stats(
    teacher: Teacher,
    dataset,
    pooling: str,
    batch_size: int,
    device: torch.device,
    workers: int = 0,
    views: int = 0,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
    checkpoint: Checkpointer | None = None,
) -> list[LayerStats]:
    """Streamed moments of every BN input over `dataset`.

    views = 0: each image as it is. views = k > 0: k random-resized-crop (+ flip, if the
    dataset flips) views of each image, the augmentation distillation renders its images with,
    so both sides of the KL describe the same kind of input.

    With a checkpointer the pass saves its running moments, the number of batches done and the
    views' generator at batch ends (every N batches or M minutes, and on a stop signal, which
    then raises Preempted); a restart skips the batches done and ends with the same moments.
    """
    checkpoint = checkpoint or Checkpointer(None, {}, 0, 0)
    model = prepare_model(teacher.model, device).eval()
    normalizer = teacher.normalizer(device)
    g = generator(seed, 50)
    n_batches = -(-len(dataset) // batch_size)
    with BNInputRecorder(model, teacher.path) as rec:
        accs = [MomentAccumulator(m.num_features, device) for _, m in rec.layers]
        first = None
        if pooling == "positions" and len(dataset):
            probe = resize(normalizer.from_uint8(dataset[0][0][None].to(device)), teacher.image_size)
            first = InputConvMoments.find(model, rec, probe, device)
            log.info(
                "first BN layer: %s",
                f"moments through the patches of '{rec.names[0]}''s input conv"
                if first
                else "moments of its input directly (no conv straight from the image)",
            )
        start = 0
        state = checkpoint.load()
        if state is not None:
            start = _restore_moments(state, accs, first, g)
        rest = dataset if not start else torch.utils.data.Subset(dataset, range(start * batch_size, len(dataset)))
        loader = evaluation_loader(rest, batch_size, workers, device, Ranks())  # pinned on CUDA
        every = log_every(n_batches, 10)
        for step, (x, _) in enumerate(progress(loader, desc="stats", total=n_batches, initial=start), start):
            x = normalizer.from_uint8(to_device(x, device))
            for _ in range(max(views, 1)):
                if views:
                    boxes, flips = sample_views(len(x), crop_scale, teacher.hflip, g, device)
                    view = apply_views(x, boxes, flips, teacher.image_size)
                else:
                    view = resize(x, teacher.image_size)
                model(prepare_input(view))
                skip = 0
                if first is not None:  # the first layer's moments come from the patches instead
                    first.update(view)
                    skip = 1
                for acc, feats in zip(accs[skip:], rec.inputs[skip:]):
                    acc.update_features(feats.float(), pooling)
            if (step + 1) % every == 0:
                log.info("stats: %d/%d batches", step + 1, n_batches)
            # a batch end is the pass's safe point
            checkpoint.at_safe_point(step + 1, n_batches, lambda step=step: _moments_state(step + 1, accs, first, g))
        names = rec.names
        running = [(m.running_mean, m.running_var) for _, m in rec.layers]
    out = [LayerStats(n, a.mean.cpu(), a.covariance().cpu(), a.count) for n, a in zip(names, accs)]
    if first is not None:
        mean, cov, count = first.moments()
        out[0] = LayerStats(names[0], mean.cpu(), cov.cpu(), count)
    for s, (rm, rv) in zip(out, running):
        if rm is not None and pooling == "positions":
            # Sanity check against BN's own running buffers (train-mode EMA with augmentation: close, not equal).
            err = (s.mean - rm.double().cpu()).abs().mean() / rv.double().cpu().sqrt().mean()
            log.info(
                "layer %-24s D=%-4d samples=%-9d |mean - running_mean| / running_std = %.3f",
                s.name,
                len(s.mean),
                s.count,
                err,
            )
    return out


def _moments_state(
    step: int, accs: list[MomentAccumulator], first: InputConvMoments | None, g: torch.Generator
) -> dict:
    """The statistics pass after `step` batches: every running moment (float64, exact) and the views' generator."""

    def moments(a: MomentAccumulator) -> dict:
        return {"count": a.count, "mean": a.mean.cpu(), "scatter": a.scatter.cpu()}

    return {
        "step": step,
        "moments": [moments(a) for a in accs],
        "first": None if first is None else moments(first.acc),
        "views_rng": g.get_state(),
    }


def _restore_moments(
    state: dict, accs: list[MomentAccumulator], first: InputConvMoments | None, g: torch.Generator
) -> int:
    """Load what `_moments_state` saved; returns the number of batches already done."""

    def load(a: MomentAccumulator, saved: dict) -> None:
        a.count = int(saved["count"])
        a.mean.copy_(saved["mean"])
        a.scatter.copy_(saved["scatter"])

    if len(state["moments"]) != len(accs) or (state["first"] is None) != (first is None):
        raise D3SError(
            "extract-stats: the checkpoint holds other layers than this teacher's; remove the --resume-dir folder"
        )
    for a, saved in zip(accs, state["moments"]):
        load(a, saved)
    if first is not None:
        load(first.acc, state["first"])
    g.set_state(state["views_rng"])
    return int(state["step"])


def run_extract_stats(
    teacher: Teacher,
    spec: DatasetSpec,
    pooling: str,
    batch_size: int,
    out: str,
    device,
    threads: int = 0,
    views: int = 0,
    crop_scale_min: float = 0.5,
    seed: int = 0,
    checkpoints: CheckpointPlan = CheckpointPlan(),
) -> None:
    data = load_dataset(spec, splits=("train",))
    workers = data.loader_workers(threads)
    check_same_classes(teacher.classes, teacher.path, data.classes, f"dataset '{spec.name}'")
    # Views crop the stored training image (as training did); plain images are its centre crop (as the test protocol)
    images = data.train if views else data.train_plain
    checkpoint = checkpoints.checkpointer(
        {
            "stage": "extract-stats",
            "teacher": teacher.weights_sha256,
            "normalisation": [teacher.mean, teacher.std],
            "image_size": teacher.image_size,
            "hflip": teacher.hflip,
            "classes": teacher.classes,
            "dataset": spec.to_dict(),
            "n_images": len(images),
            "pooling": pooling,
            "batch_size": batch_size,
            "views": views,
            "crop_scale_min": crop_scale_min if views else None,
            "seed": seed if views else None,
        }
    )
    layers = extract_stats(
        teacher, images, pooling, batch_size, device, workers, views, (crop_scale_min, 1.0), seed, checkpoint
    )
    config = {"pooling": pooling, "batch_size": batch_size, "views": views}
    if views:
        config["crop_scale_min"] = crop_scale_min
    save_stats(
        out,
        layers,
        teacher,
        pooling=pooling,
        n_images=len(data.train),
        config=config,
        seed=seed if views else None,
        dataset=spec.to_dict(),
    )
    checkpoint.clear()
