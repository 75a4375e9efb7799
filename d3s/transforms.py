"""Batch image transforms shared by every stage: normalisation and seeded crop/flip views.

A *view* is a random-resized-crop box plus a flip flag. The same `apply_views` renders views
differentiably during distillation (gradients reach the pixels), when soft labels are made, and
when a student replays stored views, so a stored label always matches the pixels it was made on.
Boxes are (cx, cy, w, h): centre in [-1, 1] image coordinates, width/height as a fraction of
the image side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .runtime import to_device


class Normalizer:
    """Maps images in [0, 1] to the model's input space ((x - mean) / std) and back."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def from_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return self(x.to(self.mean.device, torch.float32) / 255.0)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid pixel range [0, 1] expressed in normalised units (per channel)."""
        return self(torch.zeros_like(self.mean)), self(torch.ones_like(self.mean))

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        return (self.inverse(x).clamp(0, 1) * 255.0).round().to(torch.uint8)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, C, H, W] images resized (antialiased) to size x size, rounded back to uint8."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return resize(x.float(), size).round().clamp(0, 255).to(torch.uint8)


def sample_views(
    n: int,
    scale: Sequence[float],
    hflip: bool,
    generator: torch.Generator,
    device: torch.device | None = None,
    ratio: Sequence[float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-resized-crop boxes (area fraction in `scale`, aspect in `ratio`) and flip flags.

    Drawn on the host from a CPU generator (the same stream on any device), then sent to
    `device` asynchronously.
    """
    u = torch.rand(n, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flips = (u[:, 4] < 0.5) & hflip
    boxes = torch.stack([cx, cy, w, h], 1)
    if device is None:
        return boxes, flips
    return to_device(boxes, device), to_device(flips, device)


def roll_by(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """torch.roll(x, (dy, dx), dims=(2, 3)) for shifts = tensor([dy, dx]) on x's device.

    The same pixels as torch.roll, but the shift is never read back to the host: it only
    indexes, so a step that draws its jitter on the device does not wait for it.
    """
    h, w = x.shape[-2:]
    rows = (torch.arange(h, device=x.device) - shifts[0]) % h
    cols = (torch.arange(w, device=x.device) - shifts[1]) % w
    return x.index_select(2, rows).index_select(3, cols)


def identity_views(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1), torch.zeros(n, dtype=torch.bool)


def apply_views(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, out_size: int) -> torch.Tensor:
    """Crop each image to its box, flip where asked, resize to `out_size` (bilinear; differentiable)."""
    boxes = boxes.to(x.device, x.dtype)
    sign = 1.0 - 2.0 * flips.to(x.device, x.dtype)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = boxes[:, 2] * sign
    theta[:, 0, 2] = boxes[:, 0]
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 1, 2] = boxes[:, 1]
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
