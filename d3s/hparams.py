"""Every stage's settings, declared once: default, --help text, allowed values and bounds.

The commands' options (d3s.cli) and the stage sections of the workflow's config schema
(rendered by d3s.settings into config/schema/config.schema.yaml) both come from these
dataclasses. Kept free of torch so `d3s --help` and the workflow's planning are instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def hparam(
    default: Any,
    help: str,
    choices: tuple | None = None,
    schema: dict | None = None,
    config: bool = True,
    **bounds: Any,
) -> Any:
    """A setting: its default, --help text, allowed values and bounds, declared once.

    `bounds` are JSON Schema keywords in snake case (minimum, exclusive_minimum, maximum,
    exclusive_maximum); `schema` adds or overrides keywords of the rendered schema entry (an
    array's items, say). `config=False`: a command option the workflow sets per job, not a
    config key (evaluate's label_mode).
    """
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "bounds": bounds, "schema": schema or {}, "config": config},
    )


@dataclass
class RealTrainingParams:
    """Teacher training on the real training set (d3s train-teacher)."""

    epochs: int = hparam(30, "passes over the real training set", exclusive_minimum=0)
    batch_size: int = hparam(128, "images per SGD step", exclusive_minimum=0)
    lr: float = hparam(0.05, "peak learning rate (SGD, Nesterov momentum 0.9, cosine decay)", exclusive_minimum=0)
    weight_decay: float = hparam(5e-4, "L2 weight decay", minimum=0)
    warmup_epochs: int = hparam(1, "epochs of linear learning-rate warm-up", minimum=0)
    precision: str = hparam(
        "fp32",
        "forward/backward precision: fp32, or bf16 autocast (~1.6x faster on CPUs with AVX512-BF16, and on GPUs)",
        ("fp32", "bf16"),
    )


@dataclass
class StatsParams:
    """Statistic extraction (d3s extract-stats)."""

    pooling: str = hparam(
        "positions",
        "positions: every (image, h, w) of a BN input is a sample; image: one spatially averaged vector per image",
        ("positions", "image"),
    )
    batch_size: int = hparam(256, "images per forward pass", exclusive_minimum=0)
    views: int = hparam(
        0,
        "0: each training image as it is; k: k random-resized-crop (+flip) views of each, the "
        "augmentation distillation renders its images with (k times the cost)",
        minimum=0,
    )
    crop_scale_min: float = hparam(
        0.5,
        "with views > 0: the smallest crop area fraction (set it as distill.crop_scale_min)",
        exclusive_minimum=0,
        maximum=1,
    )


@dataclass
class DistillParams:
    """D3S synthesis (d3s distill)."""

    iterations: int = hparam(1000, "optimisation steps per synthetic image", exclusive_minimum=0)
    lr: float = hparam(0.1, "Adam learning rate on the pixels (betas 0.5, 0.9; cosine decay)", exclusive_minimum=0)
    batch_size: int = hparam(100, "synthetic images per minibatch (class-mixed)", exclusive_minimum=0)
    ce_weight: float = hparam(1.0, "weight of the cross-entropy on the assigned labels", minimum=0)
    kl_weight: float = hparam(
        1.0, "d3s: weight of the summed per-layer KL (each normalised by its dimension)", minimum=0
    )
    first_layer_weight: float = hparam(1.0, "d3s: extra weight on the first BatchNorm layer's KL", exclusive_minimum=0)
    ridge: float = hparam(
        1e-2,
        "d3s: ridge added to both covariances, as a fraction of the layer's mean real variance",
        exclusive_minimum=0,
    )
    ema_momentum: float = hparam(
        0.5,
        "d3s, shards of several minibatches: momentum of each minibatch's stored "
        "statistics across its visits (0: latest only)",
        minimum=0,
        maximum=1,
    )
    init: str = hparam(
        "noise",
        "starting pixels: Gaussian noise; real: the real training images the random baseline "
        "picks for the same (IPC index, class) slots (needs --data); herding / kcenter: that coreset's "
        "images of the slots (needs --init-images)",
        ("noise", "real", "herding", "kcenter"),
    )
    crop_scale_min: float = hparam(
        0.5, "smallest random-resized-crop area fraction per step", exclusive_minimum=0, maximum=1
    )
    crop_scale_max: float = hparam(
        1.0, "largest random-resized-crop area fraction per step", exclusive_minimum=0, maximum=1
    )
    jitter: int = hparam(1, "largest random roll of the images per step, in pixels", minimum=0)
    teacher_mode: str = hparam(
        "mean", "with several teachers: average them each step, or one per iteration", ("mean", "round_robin")
    )
    covariance: str = hparam("full", "d3s: full covariance, or its diagonal only (ablation)", ("full", "diagonal"))
    r_bn: float = hparam(0.01, "sre2l baseline: weight of the BatchNorm-statistics term", minimum=0)
    first_bn_multiplier: float = hparam(
        10.0, "sre2l baseline: extra weight on the first BatchNorm layer", exclusive_minimum=0
    )
    precision: str = hparam(
        "fp32", "teacher forward precision: fp32, or bf16 autocast (moments and KL stay fp32/fp64)", ("fp32", "bf16")
    )


@dataclass
class RelabelParams:
    """Soft-label generation (d3s relabel)."""

    epochs: int = hparam(300, "label epochs: one view and one soft label per image per epoch", exclusive_minimum=0)
    crop_scale_min: float = hparam(
        0.5, "smallest random-resized-crop area fraction of a view", exclusive_minimum=0, maximum=1
    )
    crop_scale_max: float = hparam(
        1.0, "largest random-resized-crop area fraction of a view", exclusive_minimum=0, maximum=1
    )
    batch_size: int = hparam(256, "images per teacher forward pass (does not change the labels)", exclusive_minimum=0)
    top_k: int = hparam(
        0,
        "keep each view's k largest logits, the rest of its mass spread evenly over the other "
        "classes (0: keep all; for thousands of classes, where dense labels do not fit)",
        minimum=0,
    )
    precision: str = hparam(
        "fp32",
        "teacher forward precision: fp32, or bf16 autocast (labels are stored fp16 either way)",
        ("fp32", "bf16"),
    )


@dataclass
class EvalParams:
    """Student training on the distilled set (d3s evaluate, evaluate-full)."""

    epochs: int = hparam(
        300, "student epochs over the distilled set (label epochs are cycled if fewer)", exclusive_minimum=0
    )
    batch_size: int = hparam(100, "images per step (capped at the set size)", exclusive_minimum=0)
    lr: float = hparam(1e-3, "AdamW learning rate (cosine decay to 0)", exclusive_minimum=0)
    weight_decay: float = hparam(0.01, "AdamW weight decay", minimum=0)
    temperature: float = hparam(4.0, "soft-label temperature T", exclusive_minimum=0)
    t2_scale: bool = hparam(False, "multiply the KL by T^2 (peers do not)")
    label_mode: str = hparam(
        "soft",
        "soft: replay stored views and teacher logits; hard: fresh views, assigned "
        "labels (the workflow runs the modes of `labels`)",
        ("soft", "hard"),
        config=False,
    )
    crop_scale_min: float = hparam(
        0.5, "hard mode and full: smallest random-resized-crop area fraction", exclusive_minimum=0, maximum=1
    )
    crop_scale_max: float = hparam(
        1.0, "hard mode and full: largest random-resized-crop area fraction", exclusive_minimum=0, maximum=1
    )
    full_epochs: int = hparam(30, "full baseline: epochs over the whole real training set", exclusive_minimum=0)
    precision: str = hparam(
        "fp32",
        "student forward/backward precision: fp32, or bf16 autocast (faster; the loss is computed in fp32)",
        ("fp32", "bf16"),
    )


# The config sections that set each stage's settings (the workflow passes them as the command's options).
SECTIONS: dict[str, type] = {
    "teacher_training": RealTrainingParams,
    "stats": StatsParams,
    "distill": DistillParams,
    "relabel": RelabelParams,
    "evaluate": EvalParams,
}
