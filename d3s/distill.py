"""Stage 3: synthesise IPC images per class by matching a teacher's BatchNorm-input statistics.

    d3s:    L = kl_weight * sum_l w_l KL(N(mu_T,l, S_T,l) || N(mu_S,l, S_S,l)) / D_l  +  ce_weight * CE
    sre2l:  L = r_bn * sum_l w_l (|mu_S,l - running_mean_l| + |var_S,l - running_var_l|)  +  ce_weight * CE

(CE of the teacher on augmented synthetic images against their assigned labels; w_1 is the
first-layer weight.) D3S uses full-covariance Gaussians of the real data from `extract-stats`;
SRe2L (the baseline) the per-channel running buffers inside the teacher's BatchNorm layers. Each
is a `StatisticsMatching` objective, found by method name in the registry (`d3s.methods`).
D3S works over the BatchNorm inputs of one or more teachers (averaged, or one teacher per iteration in
turn). A shard covers IPC indices [ipc_start, ipc_end) of classes [class_start, class_end)
(default: every class); it is optimised in
class-mixed minibatches, and when it spans several minibatches its whole-set statistics are
estimated from the live minibatch (which carries the gradient) and the stored, moving-averaged
statistics of the others.
"""

from __future__ import annotations

import abc
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts.images import SyntheticSet
from .artifacts.stats import LayerStats
from .artifacts.teacher import Teacher
from .bn_inputs import BNInputRecorder
from .checkpoint import Checkpointer
from .engine import CLEAN
from .errors import D3SError
from .gaussian import GaussianTargets, MovingMoments, feature_moments, gaussian_kl_batched, gaussian_target
from .hparams import DistillParams
from .methods import get_method
from .runtime import (
    autocast,
    full_precision,
    generator,
    log,
    log_every,
    prepare_input,
    prepare_model,
    progress,
    to_device,
)
from .shard import Shard
from .training import cosine_schedule
from .transforms import apply_views, roll_by, sample_views


class StatisticsMatching(abc.ABC):
    """The objective of a synthesising method (registered in `d3s.methods`): one matching term per
    BatchNorm layer of each teacher, from the layers' recorded inputs.

    A method with whole-set statistics keeps them as state (`initialise`, `state_dict`); one that
    matches each minibatch on its own keeps these defaults.
    """

    name: str  # the method's name in the registry
    loss_key: str  # the matching term in log lines
    term_name: str  # one layer's term in error messages
    weight: float  # of the matching term against cross-entropy
    first_layer_weight: float

    @classmethod
    def build(
        cls,
        teachers: list[Teacher],
        recorders: list[BNInputRecorder],
        stats: list[list[LayerStats]] | None,
        pooling: str,
        params: DistillParams,
        device,
    ) -> StatisticsMatching:
        """The objective of a distill run, whatever of these inputs it uses."""
        return cls(teachers, recorders, stats, pooling, params, device)

    def config(self, params: DistillParams) -> dict:
        """The settings the images artifact records."""
        return asdict(params)

    def moments(self, feats: torch.Tensor):
        return None

    def initialise(self, k: int, per_block_moments: list[list[tuple]], sizes: list[int]) -> None:  # noqa: B027
        """Start the moving statistics from whole-set moments (an objective without any keeps this no-op)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, sizes: list[int], device) -> None:  # noqa: B027
        """Restore what state_dict saved (nothing, for an objective without moving statistics)."""

    @abc.abstractmethod
    def layer_terms(self, k: int, feats: list[torch.Tensor], b: int) -> torch.Tensor:
        """Each layer's term for teacher k with block b live: float64 [L]."""


class GaussianMatching(StatisticsMatching):
    """D3S: per-layer KL between the real Gaussian and the synthetic set's (moving) Gaussian.

    Layers of equal width are factorised together: one batched Cholesky per width and teacher
    per step (ResNet-18 has 4 widths for its 20 BatchNorm layers), not one call per layer.
    """

    name, loss_key, term_name = "d3s", "kl", "KL"

    def __init__(self, teachers, recorders, stats, pooling, params: DistillParams, device):
        if stats is None or len(stats) != len(teachers):
            raise D3SError("distill: method d3s needs one statistics file (--stats) per teacher")
        for t, rec, layer_stats in zip(teachers, recorders, stats):
            if [s.name for s in layer_stats] != rec.names:
                raise D3SError(
                    f"distill: statistics layers {[s.name for s in layer_stats][:3]}... do not match "
                    f"the BatchNorm layers of {t.path} ({rec.names[:3]}...)"
                )
        self.diagonal = params.covariance == "diagonal"
        self.pooling = pooling
        # per teacher: [(layer indices of one width, their stacked targets)]
        self.groups: list[list[tuple[list[int], GaussianTargets]]] = []
        for layer_stats in stats:
            targets = [
                gaussian_target(s.mean.to(device), self._shape(s.cov.to(device)), params.ridge) for s in layer_stats
            ]
            widths: dict[int, list[int]] = {}
            for layer, t in enumerate(targets):
                widths.setdefault(t.dim, []).append(layer)
            self.groups.append(
                [(ls, GaussianTargets.stack([targets[layer] for layer in ls])) for ls in widths.values()]
            )
        self.moving: list[list[MovingMoments]] = []  # per teacher and layer, once the block sizes are known
        self.momentum = params.ema_momentum
        self.weight = params.kl_weight
        self.first_layer_weight = params.first_layer_weight

    def config(self, params: DistillParams) -> dict:
        return {**asdict(params), "pooling": self.pooling}

    def _shape(self, cov: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1)) if self.diagonal else cov

    def moments(self, feats: torch.Tensor):
        mean, cov = feature_moments(feats.float(), self.pooling)
        return mean, self._shape(cov)

    def state_dict(self) -> dict:
        return {"moving": [[mm.state_dict() for mm in layers] for layers in self.moving]}

    def load_state_dict(self, state: dict, sizes: list[int], device) -> None:
        self.moving = []
        for layers in state["moving"]:
            restored = [MovingMoments(self.momentum, sizes) for _ in layers]
            for mm, saved in zip(restored, layers):
                mm.load_state_dict(saved, device)
            self.moving.append(restored)

    @torch.no_grad()
    def initialise(self, k: int, per_block_moments: list[list[tuple]], sizes: list[int]) -> None:
        if len(self.moving) <= k:
            n_layers = sum(len(ls) for ls, _ in self.groups[k])
            self.moving.append([MovingMoments(self.momentum, sizes) for _ in range(n_layers)])
        for layer, mm in enumerate(self.moving[k]):
            mm.initialise([block[layer] for block in per_block_moments])

    def layer_terms(self, k: int, feats: list[torch.Tensor], b: int) -> torch.Tensor:
        """Each layer's KL / D_l for teacher k with block b live: float64 [L], NaN where a factorisation failed."""
        live = [self.moments(f) for f in feats]
        mm = self.moving[k] if self.moving else None
        whole = [mm[layer].combine(b, *live[layer]) for layer in range(len(live))] if mm else live
        terms: list[torch.Tensor | None] = [None] * len(live)
        for layers, targets in self.groups[k]:
            means = torch.stack([whole[layer][0] for layer in layers])
            covs = self._shape(
                torch.stack([whole[layer][1] for layer in layers])
            )  # combining adds off-diagonal scatter
            kl = gaussian_kl_batched(targets, means, covs) / targets.dim
            for i, layer in enumerate(layers):
                terms[layer] = kl[i]
        if mm:
            for layer, (mean_b, cov_b) in enumerate(live):
                mm[layer].update(b, mean_b, cov_b)
        return torch.stack(terms)


class RunningStatsMatching(StatisticsMatching):
    """SRe2L: per-channel batch mean/variance against the teacher's BatchNorm running buffers
    (each minibatch on its own: no whole-set statistics, no statistics files)."""

    name, loss_key, term_name = "sre2l", "bn", "BN loss"

    def __init__(self, teachers, recorders, params: DistillParams):
        self.buffers = [[(m.running_mean, m.running_var) for _, m in rec.layers] for rec in recorders]
        self.weight = params.r_bn
        self.first_layer_weight = params.first_bn_multiplier

    @classmethod
    def build(cls, teachers, recorders, stats, pooling, params, device) -> RunningStatsMatching:
        return cls(teachers, recorders, params)

    def layer_terms(self, k: int, feats: list[torch.Tensor], b: int) -> torch.Tensor:
        terms = []
        for (running_mean, running_var), f in zip(self.buffers[k], feats):
            x = f.float().transpose(0, 1).flatten(1)  # channels x (N*H*W)
            var, mean = torch.var_mean(x, dim=1, unbiased=False)
            term = torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)
            terms.append(term.double())
        return torch.stack(terms)


class Synthesis:
    """One shard's optimisation state and its step: pixels per minibatch (block), their Adam
    optimisers and cosine schedules, the augmentation stream, the objective and the loss curves.

    A step reads nothing back from the device: loss curves and the first non-finite
    (iteration, layer) are recorded there and read by `read` at log intervals.
    """

    def __init__(
        self,
        teachers,
        recorders,
        objective,
        labels: torch.Tensor,
        init: torch.Tensor,
        params: DistillParams,
        g_aug: torch.Generator,
        device: torch.device,
    ):
        self.teachers, self.recorders, self.objective, self.params = teachers, recorders, objective, params
        self.device, self.g_aug = device, g_aug
        t0 = teachers[0]
        self.size, self.hflip = t0.image_size, t0.hflip
        self.lo, self.hi = t0.normalizer(device).bounds()
        n = len(labels)
        self.blocks = [slice(b, min(b + params.batch_size, n)) for b in range(0, n, params.batch_size)]
        self.labels = [to_device(labels[b], device) for b in self.blocks]
        self.pixels = [torch.nn.Parameter(init[b].clone()) for b in self.blocks]
        self.optimisers = [torch.optim.Adam([p], lr=params.lr, betas=(0.5, 0.9)) for p in self.pixels]
        self.schedules = [cosine_schedule(o, params.iterations) for o in self.optimisers]
        # the first layer's loss has its own weight; teachers of different architectures have different layer counts
        self.weights = [[objective.first_layer_weight] + [1.0] * (len(rec.names) - 1) for rec in recorders]
        self.curves = torch.zeros(3, params.iterations, dtype=torch.float64, device=device)  # total, match, ce
        # first iteration with a non-finite term, per teacher and layer (+ one for the total loss); CLEAN: none
        self.first_bad = [
            torch.full((len(rec.names) + 1,), CLEAN, dtype=torch.int64, device=device) for rec in recorders
        ]

    @property
    def steps(self) -> int:
        return self.params.iterations * len(self.blocks)

    def render(self, x: torch.Tensor) -> torch.Tensor:
        """A random-resized-crop (+ flip) view of each image after a random roll (jitter)."""
        p = self.params
        boxes, flips = sample_views(len(x), (p.crop_scale_min, p.crop_scale_max), self.hflip, self.g_aug, self.device)
        if p.jitter:
            dx_dy = torch.randint(-p.jitter, p.jitter + 1, (2,), generator=self.g_aug)
            x = roll_by(x, to_device(dx_dy.flip(0), self.device))
        return apply_views(x, boxes, flips, self.size)

    def forward(self, k: int, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.params.precision):
            return self.teachers[k].model(prepare_input(x))

    @torch.no_grad()
    def initialise_statistics(self) -> None:
        """Start the whole-set statistics exact: every block's moments under one view (moments only,
        the feature maps of every block would not fit at scale)."""
        if len(self.blocks) == 1:
            return
        for k, rec in enumerate(self.recorders):
            per_block = []
            for p in self.pixels:
                self.forward(k, self.render(p))
                with full_precision(self.device):
                    per_block.append([self.objective.moments(f) for f in rec.inputs])
            self.objective.initialise(k, per_block, [len(p) for p in self.pixels])

    def step(self, step: int) -> None:
        """One optimisation step of one block (iteration step // blocks, block step % blocks)."""
        it, b = divmod(step, len(self.blocks))
        p, y = self.pixels[b], self.labels[b]
        active = range(len(self.teachers)) if self.params.teacher_mode == "mean" else [it % len(self.teachers)]
        x = self.render(p)
        loss_match = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_ce = torch.zeros((), device=self.device)
        for k in active:
            logits = self.forward(k, x)
            with full_precision(self.device):  # moments in fp32, KL in fp64, whatever the forward's precision
                loss_ce = loss_ce + F.cross_entropy(logits.float(), y)
                terms = self.objective.layer_terms(k, self.recorders[k].inputs, b)
            self._note_non_finite(k, it, terms)
            for layer, w in enumerate(self.weights[k]):  # in layer order, as a running sum
                loss_match = loss_match + w * terms[layer]
        loss_match, loss_ce = loss_match / len(active), loss_ce / len(active)
        loss = self.objective.weight * loss_match.float() + self.params.ce_weight * loss_ce
        self._note_non_finite(active[0], it, loss[None], total=True)
        self.optimisers[b].zero_grad(set_to_none=True)
        loss.backward()
        self.optimisers[b].step()
        self.schedules[b].step()
        with torch.no_grad():
            p.copy_(torch.maximum(torch.minimum(p, self.hi), self.lo))
            share = 1 / len(self.blocks)
            values = torch.stack([loss.detach().double(), loss_match.detach(), loss_ce.detach().double()])
            self.curves[:, it] += values * share

    def _note_non_finite(self, k: int, it: int, values: torch.Tensor, total: bool = False) -> None:
        bad = ~torch.isfinite(values.detach())
        where = self.first_bad[k][-1:] if total else self.first_bad[k][:-1]
        where.copy_(torch.where(bad, where.clamp(max=it), where))

    def read(self, it: int) -> np.ndarray:
        """Iteration `it`'s curve values on the host (the loop's one sync); raises at a non-finite term."""
        host = torch.cat([self.curves[:, it].clone(), *(f.double() for f in self.first_bad)]).cpu().numpy()
        self.raise_if_non_finite(host[3:])
        return host[:3]

    def raise_if_non_finite(self, first_bad: np.ndarray | None = None) -> None:
        if first_bad is None:
            first_bad = torch.cat([f.double() for f in self.first_bad]).cpu().numpy()
        offset, found = 0, []
        for k, rec in enumerate(self.recorders):
            row = first_bad[offset : offset + len(rec.names) + 1]
            offset += len(row)
            names = [f"{self.objective.term_name} of layer '{n}'" for n in rec.names]
            found += [(int(v), what, k) for v, what in zip(row, names + ["the loss"]) if v < CLEAN]
        if found:
            it, what, k = min(found)
            raise D3SError(
                f"distill: {what} is not finite at iteration {it + 1} (teacher {self.teachers[k].path}); "
                "check the statistics file, or try a larger 'ridge' or a smaller 'lr'"
            )

    def state_dict(self, step: int) -> dict:
        """Everything the loop needs to continue bit-identically after `step` completed steps."""
        return {
            "step": step,
            "pixels": [p.detach().cpu().clone() for p in self.pixels],
            "optimisers": [o.state_dict() for o in self.optimisers],
            "schedules": [sch.state_dict() for sch in self.schedules],
            "g_aug": self.g_aug.get_state(),
            "objective": self.objective.state_dict(),
            "curves": self.curves.cpu(),
        }

    def load_state_dict(self, state: dict) -> int:
        with torch.no_grad():
            for p, saved in zip(self.pixels, state["pixels"]):
                p.copy_(saved.to(self.device))
        for o, saved in zip(self.optimisers, state["optimisers"]):
            o.load_state_dict(saved)
        for sch, saved in zip(self.schedules, state["schedules"]):
            sch.load_state_dict(saved)
        self.g_aug.set_state(state["g_aug"])
        self.objective.load_state_dict(state["objective"], [len(p) for p in self.pixels], self.device)
        self.curves.copy_(state["curves"])
        return int(state["step"])


def _checked_state(synthesis: Synthesis, step: int) -> dict:
    synthesis.raise_if_non_finite()  # never checkpoint a diverged state
    return synthesis.state_dict(step)


def distill(
    teachers: list[Teacher],
    stats: list[list[LayerStats]] | None,
    pooling: str,
    shard: Shard,
    params: DistillParams,
    seed: int,
    device: torch.device,
    method: str = "d3s",
    checkpoint: Checkpointer | None = None,
    init_images: torch.Tensor | None = None,
) -> SyntheticSet:
    """Synthesise the shard's images. With `params.init` real / herding / kcenter, `init_images` (uint8
    [n, C, H, W], one per (IPC index, class) slot in the shard's IPC-major order) are the start."""
    classes = shard.classes(len(teachers[0].classes))
    bounds = (shard.ipc_start, shard.ipc_end, classes.start, classes.stop)  # the seeds' stream ids
    for t in teachers:  # hooked models are never compiled; channels_last where it is faster
        prepare_model(t.model, device)
    recorders = [BNInputRecorder(t.model, t.path) for t in teachers]
    objective = get_method(method).matching_class().build(teachers, recorders, stats, pooling, params, device)
    # Class-mixed order: consecutive images have different classes (BN-style statistics are class-agnostic).
    slots = shard.slots(len(teachers[0].classes))
    labels = torch.tensor([c for _, c in slots], dtype=torch.long)
    init = _starting_pixels(teachers[0], params, init_images, len(labels), generator(seed, 10, *bounds), device)
    synthesis = Synthesis(teachers, recorders, objective, labels, init, params, generator(seed, 11, *bounds), device)
    checkpoint = checkpoint or Checkpointer(None, {}, 0, 0)
    start_step = _resume_or_start(synthesis, checkpoint)
    log.info(
        "%s: %d images (shard %s: IPC %d..%d x classes %d..%d) in %d minibatch(es), %d iterations, %d teacher(s)",
        method,
        len(labels),
        shard,
        shard.ipc_start,
        shard.ipc_end - 1,
        classes.start,
        classes.stop - 1,
        len(synthesis.blocks),
        params.iterations,
        len(teachers),
    )
    _optimise(synthesis, start_step, checkpoint, desc=f"{method} {shard}")
    for rec in recorders:
        rec.__exit__(None, None, None)
    return _synthetic_set(synthesis, method, labels, slots, shard, seed)


def _starting_pixels(
    t0: Teacher, params: DistillParams, init_images: torch.Tensor | None, n: int, g_init: torch.Generator, device
) -> torch.Tensor:
    """The n images to start from, normalised and clipped to the valid pixel range: `init_images`, or noise."""
    normalizer = t0.normalizer(device)
    size, channels = t0.image_size, t0.channels
    if params.init in ("real", "herding", "kcenter"):
        if init_images is None or tuple(init_images.shape) != (n, channels, size, size):
            got = "none" if init_images is None else tuple(init_images.shape)
            raise D3SError(
                f"distill: init '{params.init}' needs {n} starting images of {channels}x{size}x{size}, got {got}"
            )
        init = normalizer.from_uint8(init_images.to(device))
    elif params.init == "noise":
        init = torch.randn(n, channels, size, size, generator=g_init).to(device)
    else:
        raise D3SError(f"distill: init must be 'noise', 'real', 'herding' or 'kcenter', got {params.init!r}")
    lo, hi = normalizer.bounds()
    return torch.maximum(torch.minimum(init, hi), lo)


def _resume_or_start(synthesis: Synthesis, checkpoint: Checkpointer) -> int:
    """The step to start at: a checkpoint of the same run continues; else the whole-set statistics start exact."""
    state = checkpoint.load()
    if state is not None:
        return synthesis.load_state_dict(state)
    synthesis.initialise_statistics()
    return 0


def _optimise(synthesis: Synthesis, start_step: int, checkpoint: Checkpointer, desc: str) -> None:
    """The loop: steps read nothing back; a log line (and a checkpoint) every so often does."""
    iterations, blocks = synthesis.params.iterations, len(synthesis.blocks)
    every = log_every(iterations)
    bar = progress(total=synthesis.steps, initial=start_step, desc=desc)
    for step in range(start_step, synthesis.steps):
        synthesis.step(step)
        bar.update(1)
        it, b = divmod(step, blocks)
        if b == blocks - 1 and ((it + 1) % every == 0 or it == 0):
            total, match, ce = synthesis.read(it)
            bar.set_postfix(loss=f"{total:.4f}")
            log.info(
                "iteration %d/%d  loss %.4f  (%s %.4f, ce %.4f)",
                it + 1,
                iterations,
                total,
                synthesis.objective.loss_key,
                match,
                ce,
            )
        checkpoint.at_safe_point(step + 1, synthesis.steps, lambda done=step + 1: _checked_state(synthesis, done))
    bar.close()
    synthesis.raise_if_non_finite()


def _synthetic_set(
    synthesis: Synthesis, method: str, labels: torch.Tensor, slots: list[tuple[int, int]], shard: Shard, seed: int
) -> SyntheticSet:
    """The shard as an images artifact: uint8 images, labels, slots, loss curves and provenance."""
    teachers = synthesis.teachers
    t0 = teachers[0]
    normalizer = t0.normalizer(synthesis.device)
    with torch.no_grad():
        images = torch.cat([normalizer.to_uint8(p) for p in synthesis.pixels]).permute(0, 2, 3, 1).cpu().numpy()
    curves = dict(zip(("total", "match", "ce"), synthesis.curves.cpu().numpy()))
    return SyntheticSet(
        images=images,
        labels=labels.numpy(),
        ipc_index=np.asarray([i for i, _ in slots], dtype=np.int64),
        classes=t0.classes,
        method=method,
        teachers=[t.weights_sha256 for t in teachers],
        norm_mean=t0.mean,
        norm_std=t0.std,
        hflip=t0.hflip,
        config=synthesis.objective.config(synthesis.params),
        seed=seed,
        loss_curves={str(shard): curves},
        inputs={"teachers": [t.path for t in teachers], "shard": str(shard)},
    )
