"""Stage 3: synthesise IPC images per class by matching a teacher's BatchNorm-input statistics.

    d3s:    L = kl_weight * sum_l w_l KL(N(mu_T,l, S_T,l) || N(mu_S,l, S_S,l)) / D_l  +  ce_weight * CE
    sre2l:  L = r_bn * sum_l w_l (|mu_S,l - running_mean_l| + |var_S,l - running_var_l|)  +  ce_weight * CE

(CE of the teacher on augmented synthetic images against their assigned labels; w_1 is the
first-layer weight.) D3S uses full-covariance Gaussians of the real data from `extract-stats`;
SRe2L (the baseline) the per-channel running buffers inside the teacher's BatchNorm layers.
D3S works over the BatchNorm inputs of one or more teachers (averaged, or one teacher per iteration in
turn). A shard covers IPC indices [ipc_start, ipc_end) of classes [class_start, class_end)
(default: every class); it is optimised in
class-mixed minibatches, and when it spans several minibatches its whole-set statistics are
estimated from the live minibatch (which carries the gradient) and the stored, moving-averaged
statistics of the others.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import Checkpointer
from .errors import D3SError
from .hparams import DistillParams
from .gaussian import GaussianTarget, MovingMoments, feature_moments, gaussian_kl, gaussian_target
from .runtime import generator, log, log_every, progress
from .stats import BNInputRecorder, LayerStats
from .synthetic import SyntheticSet
from .teacher import Teacher
from .training import cosine_schedule
from .transforms import apply_views, sample_views




def _check_finite(value: torch.Tensor, what: str, iteration: int, teacher: Teacher) -> None:
    if not torch.isfinite(value):
        raise D3SError(
            f"distill: {what} is {value.item()} at iteration {iteration} (teacher {teacher.path}); "
            "check the statistics file, or try a larger 'ridge' or a smaller 'lr'"
        )


class GaussianMatching:
    """D3S: per-layer KL between the real Gaussian and the synthetic set's (moving) Gaussian."""

    name = "d3s"

    def __init__(self, teachers, recorders, stats, pooling, params: DistillParams, device):
        if stats is None or len(stats) != len(teachers):
            raise D3SError("distill: method d3s needs one statistics file (--stats) per teacher")
        for t, rec, layer_stats in zip(teachers, recorders, stats):
            if [s.name for s in layer_stats] != rec.names:
                raise D3SError(f"distill: statistics layers {[s.name for s in layer_stats][:3]}... do not match "
                               f"the BatchNorm layers of {t.path} ({rec.names[:3]}...)")
        self.diagonal = params.covariance == "diagonal"
        self.pooling = pooling
        self.targets: list[list[GaussianTarget]] = [
            [gaussian_target(s.mean.to(device), self._shape(s.cov.to(device)), params.ridge) for s in layer_stats]
            for layer_stats in stats
        ]
        self.moving: list[list[MovingMoments]] = []  # per teacher and layer, once the block sizes are known
        self.momentum = params.ema_momentum
        self.weight = params.kl_weight
        self.first_layer_weight = params.first_layer_weight

    def _shape(self, cov: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(torch.diagonal(cov)) if self.diagonal else cov

    def moments(self, feats: torch.Tensor):
        mean, cov = feature_moments(feats.float(), self.pooling)
        return mean, self._shape(cov)

    def state_dict(self) -> dict:
        return {"moving": [[mm.state_dict() for mm in layers] for layers in self.moving]}

    def load_state_dict(self, state: dict, n_teachers: int, sizes: list[int], device) -> None:
        self.moving = []
        for layers in state["moving"]:
            restored = [MovingMoments(self.momentum, sizes) for _ in layers]
            for mm, saved in zip(restored, layers):
                mm.load_state_dict(saved, device)
            self.moving.append(restored)

    @torch.no_grad()
    def initialise(self, k: int, per_block_moments: list[list[tuple]], sizes: list[int]) -> None:
        if len(self.moving) <= k:
            self.moving.append([MovingMoments(self.momentum, sizes) for _ in self.targets[k]])
        for l, mm in enumerate(self.moving[k]):
            mm.initialise([block[l] for block in per_block_moments])

    def layer_loss(self, k: int, l: int, feats: torch.Tensor, b: int) -> torch.Tensor:
        target = self.targets[k][l]
        mean_b, cov_b = self.moments(feats)
        mm = self.moving[k][l] if self.moving else None
        mean, cov = mm.combine(b, mean_b, cov_b) if mm else (mean_b, cov_b)
        cov = self._shape(cov)  # combining blocks adds between-block scatter off the diagonal
        try:
            kl = gaussian_kl(target, mean, cov) / target.dim
        except torch.linalg.LinAlgError:
            kl = torch.tensor(float("nan"), dtype=torch.float64)
        if mm:
            mm.update(b, mean_b, cov_b)
        return kl


class RunningStatsMatching:
    """SRe2L: per-channel batch mean/variance against the teacher's BatchNorm running buffers."""

    name = "sre2l"

    def __init__(self, teachers, recorders, params: DistillParams):
        self.buffers = [[(m.running_mean, m.running_var) for _, m in rec.layers] for rec in recorders]
        self.weight = params.r_bn
        self.first_layer_weight = params.first_bn_multiplier

    def moments(self, feats: torch.Tensor):  # unused: SRe2L matches each minibatch on its own
        return None

    def initialise(self, k, per_block_moments, sizes) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state, n_teachers, sizes, device) -> None:
        pass

    def layer_loss(self, k: int, l: int, feats: torch.Tensor, b: int) -> torch.Tensor:
        running_mean, running_var = self.buffers[k][l]
        x = feats.float().transpose(0, 1).flatten(1)  # channels x (N*H*W)
        var, mean = torch.var_mean(x, dim=1, unbiased=False)
        return (torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)).double()


def distill(
    teachers: list[Teacher],
    stats: list[list[LayerStats]] | None,
    pooling: str,
    ipc_start: int,
    ipc_end: int,
    params: DistillParams,
    seed: int,
    device: torch.device,
    class_start: int = 0,
    class_end: int | None = None,
    method: str = "d3s",
    checkpoint: Checkpointer | None = None,
    init_images: torch.Tensor | None = None,
) -> SyntheticSet:
    """Synthesise the shard's images. With `params.init == "real"`, `init_images` (uint8
    [n, C, H, W], one per (IPC index, class) slot in the shard's IPC-major order) are the start."""
    if not 0 <= ipc_start < ipc_end:
        raise D3SError(f"distill: need 0 <= ipc_start < ipc_end, got {ipc_start}..{ipc_end}")
    class_end = len(teachers[0].classes) if class_end is None else class_end
    if not 0 <= class_start < class_end <= len(teachers[0].classes):
        raise D3SError(f"distill: need 0 <= class_start < class_end <= {len(teachers[0].classes)}, got {class_start}..{class_end}")
    if params.teacher_mode not in ("mean", "round_robin"):
        raise D3SError(f"distill: teacher_mode must be 'mean' or 'round_robin', got {params.teacher_mode!r}")
    t0 = teachers[0]
    num_classes, size, channels = len(t0.classes), t0.image_size, t0.channels
    normalizer = t0.normalizer(device)
    lo, hi = normalizer.bounds()
    recorders = [BNInputRecorder(t.model, t.path) for t in teachers]
    if method == "d3s":
        objective = GaussianMatching(teachers, recorders, stats, pooling, params, device)
    elif method == "sre2l":
        objective = RunningStatsMatching(teachers, recorders, params)
    else:
        raise D3SError(f"distill: method must be 'd3s' or 'sre2l', got {method!r}")
    # per teacher: teachers of different architectures have different numbers of BN layers
    weights = [[objective.first_layer_weight] + [1.0] * (len(rec.names) - 1) for rec in recorders]

    # Class-mixed order: consecutive images have different classes (BN-style statistics are class-agnostic).
    slots = shard_slots(ipc_start, ipc_end, class_start, class_end)
    labels = torch.tensor([c for _, c in slots], dtype=torch.long)
    ipc_index = np.asarray([i for i, _ in slots], dtype=np.int64)
    n = len(labels)
    shard = (ipc_start, ipc_end, class_start, class_end)
    g_init, g_aug = generator(seed, 10, *shard), generator(seed, 11, *shard)
    if params.init == "real":
        if init_images is None or tuple(init_images.shape) != (n, channels, size, size):
            got = "none" if init_images is None else tuple(init_images.shape)
            raise D3SError(f"distill: init 'real' needs {n} starting images of {channels}x{size}x{size}, got {got}")
        init = normalizer.from_uint8(init_images.to(device))
    elif params.init == "noise":
        init = torch.randn(n, channels, size, size, generator=g_init).to(device)
    else:
        raise D3SError(f"distill: init must be 'noise' or 'real', got {params.init!r}")
    init = torch.maximum(torch.minimum(init, hi), lo)
    blocks = [slice(b, min(b + params.batch_size, n)) for b in range(0, n, params.batch_size)]
    pixels = [torch.nn.Parameter(init[b].clone()) for b in blocks]
    optimisers = [torch.optim.Adam([p], lr=params.lr, betas=(0.5, 0.9)) for p in pixels]
    schedules = [cosine_schedule(o, params.iterations) for o in optimisers]
    scale = (params.crop_scale_min, params.crop_scale_max)

    def render(x: torch.Tensor) -> torch.Tensor:
        boxes, flips = sample_views(len(x), scale, t0.hflip, g_aug)
        if params.jitter:
            dx, dy = torch.randint(-params.jitter, params.jitter + 1, (2,), generator=g_aug).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return apply_views(x, boxes, flips, size)

    checkpoint = checkpoint or Checkpointer(None, {}, 0)
    state = checkpoint.load()
    if state is None and len(blocks) > 1:  # start the whole-set statistics exact
        with torch.no_grad():
            for k, (t, rec) in enumerate(zip(teachers, recorders)):
                per_block = []  # moments only: the feature maps of every block would not fit at scale
                for p in pixels:
                    t.model(render(p))
                    per_block.append([objective.moments(f) for f in rec.inputs])
                objective.initialise(k, per_block, [len(p) for p in pixels])

    curves = {k: np.zeros(params.iterations, dtype=np.float64) for k in ("total", "match", "ce")}
    total_steps = params.iterations * len(blocks)
    start_step = 0

    def snapshot(step: int) -> dict:
        """Everything the loop needs to continue bit-identically after `step` completed steps."""
        return {
            "step": step,
            "pixels": [p.detach().cpu().clone() for p in pixels],
            "optimisers": [o.state_dict() for o in optimisers],
            "schedules": [sch.state_dict() for sch in schedules],
            "g_aug": g_aug.get_state(),
            "objective": objective.state_dict(),
            "curves": {k: torch.from_numpy(v.copy()) for k, v in curves.items()},
        }

    if state is not None:
        start_step = int(state["step"])
        with torch.no_grad():
            for p, saved in zip(pixels, state["pixels"]):
                p.copy_(saved.to(device))
        for o, saved in zip(optimisers, state["optimisers"]):
            o.load_state_dict(saved)
        for sch, saved in zip(schedules, state["schedules"]):
            sch.load_state_dict(saved)
        g_aug.set_state(state["g_aug"])
        objective.load_state_dict(state["objective"], len(teachers), [len(p) for p in pixels], device)
        curves = {k: v.numpy().copy() for k, v in state["curves"].items()}
    every = log_every(params.iterations)
    bar = progress(total=total_steps, initial=start_step, desc=f"{method} ipc {ipc_start}-{ipc_end}")
    log.info("%s: %d images (IPC %d..%d x classes %d..%d) in %d minibatch(es), %d iterations, %d teacher(s)",
             method, n, ipc_start, ipc_end - 1, class_start, class_end - 1, len(blocks), params.iterations, len(teachers))
    for step in range(start_step, total_steps):
        it, b = divmod(step, len(blocks))
        p, y = pixels[b], labels[blocks[b]].to(device)
        active = list(range(len(teachers))) if params.teacher_mode == "mean" else [it % len(teachers)]
        x = render(p)
        loss_match = torch.zeros((), dtype=torch.float64, device=device)
        loss_ce = torch.zeros((), device=device)
        for k in active:
            t, rec = teachers[k], recorders[k]
            logits = t.model(x)
            loss_ce = loss_ce + F.cross_entropy(logits, y)
            for l, feats in enumerate(rec.inputs):
                term = objective.layer_loss(k, l, feats, b)
                _check_finite(term, f"{'KL' if method == 'd3s' else 'BN loss'} of layer '{rec.names[l]}'", it + 1, t)
                loss_match = loss_match + weights[k][l] * term
        loss_match, loss_ce = loss_match / len(active), loss_ce / len(active)
        loss = objective.weight * loss_match.float() + params.ce_weight * loss_ce
        _check_finite(loss, "the loss", it + 1, teachers[active[0]])
        optimisers[b].zero_grad(set_to_none=True)
        loss.backward()
        optimisers[b].step()
        schedules[b].step()
        with torch.no_grad():
            p.copy_(torch.maximum(torch.minimum(p, hi), lo))
        share_it = 1 / len(blocks)
        curves["total"][it] += loss.item() * share_it
        curves["match"][it] += loss_match.item() * share_it
        curves["ce"][it] += loss_ce.item() * share_it
        bar.update(1)
        if b == len(blocks) - 1 and ((it + 1) % every == 0 or it == 0):
            bar.set_postfix(loss=f"{curves['total'][it]:.4f}")
            log.info("iteration %d/%d  loss %.4f  (%s %.4f, ce %.4f)", it + 1, params.iterations,
                     curves["total"][it], "kl" if method == "d3s" else "bn", curves["match"][it], curves["ce"][it])
        if checkpoint.due(step + 1) and step + 1 < total_steps:
            checkpoint.save(snapshot(step + 1))
        checkpoint.maybe_stop(lambda: snapshot(step + 1))
    bar.close()
    for rec in recorders:
        rec.__exit__(None, None, None)

    with torch.no_grad():
        images = torch.cat([normalizer.to_uint8(p) for p in pixels]).permute(0, 2, 3, 1).cpu().numpy()
    config = {**asdict(params), "pooling": pooling} if method == "d3s" else asdict(params)
    return SyntheticSet(
        images=images, labels=labels.numpy(), ipc_index=ipc_index, classes=t0.classes, method=method,
        teachers=[t.weights_sha256 for t in teachers], norm_mean=t0.mean, norm_std=t0.std, hflip=t0.hflip,
        config=config, seed=seed,
        loss_curves={shard_name(ipc_start, ipc_end, class_start, class_end, num_classes): curves},
        inputs={"teachers": [t.path for t in teachers], "shard": list(shard)},
    )


def shard_slots(ipc_start: int, ipc_end: int, class_start: int, class_end: int) -> list[tuple[int, int]]:
    """The shard's (IPC index, class) slots in image order: IPC-major, so consecutive images differ in class."""
    return [(i, c) for i in range(ipc_start, ipc_end) for c in range(class_start, class_end)]


def shard_name(ipc_start: int, ipc_end: int, class_start: int, class_end: int, num_classes: int) -> str:
    name = f"ipc{ipc_start}-{ipc_end}"
    return name if (class_start, class_end) == (0, num_classes) else f"{name}_c{class_start}-{class_end}"
