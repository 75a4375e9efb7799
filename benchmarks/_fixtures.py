"""Shared set-up for the benchmark scripts: a teacher and statistics without any training."""

from __future__ import annotations

import torch

from d3s.artifacts.stats import LayerStats
from d3s.artifacts.teacher import Teacher, weights_digest
from d3s.bn_inputs import BNInputRecorder
from d3s.models import build_model


def random_teacher(arch: str = "convnet3", classes: int = 10, channels: int = 3, size: int = 32) -> Teacher:
    """A randomly initialised teacher in eval mode (costs per step do not depend on the weights)."""
    torch.manual_seed(0)
    model = build_model(arch, classes, channels, size).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Teacher(
        path=f"<random {arch}>",
        model=model,
        arch=arch,
        classes=[str(i) for i in range(classes)],
        mean=[0.5] * channels,
        std=[0.25] * channels,
        image_size=size,
        channels=channels,
        hflip=True,
        weights_sha256=weights_digest(model.state_dict()),
        test_top1=0.0,
        dataset={},
    )


def real_like_stats(teacher: Teacher, n: int = 256) -> list[LayerStats]:
    """Per-layer mean/covariance of the teacher's BN inputs on random images (a stand-in for real data)."""
    x = torch.randn(n, teacher.channels, teacher.image_size, teacher.image_size)
    with BNInputRecorder(teacher.model) as rec, torch.no_grad():
        teacher.model(x)
        out = []
        for name, f in zip(rec.names, rec.inputs):
            s = f.double().transpose(0, 1).flatten(1).T
            out.append(LayerStats(name, s.mean(0), torch.cov(s.T, correction=0), len(s)))
    return out
