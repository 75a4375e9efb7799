"""One registry turns an architecture name into a model (timm-style).

Names:
  convnet3, convnet4 (+ _w64, _w32)  the small ConvNets of the distillation literature, with BatchNorm
  ... + _in, e.g. convnet3_in        the same with instance norm (DC/DSA/MTT's ConvNet): a student whose
                                     result does not depend on how a batch is split across processes
  <timm resnet name>_cifar           a timm ResNet with the CIFAR stem: 3x3 conv, stride 1, no max-pool
                                     (for 32-64 px inputs), e.g. resnet18_cifar
  any other name                     `timm.create_model(name)`, randomly initialised (nothing is
                                     downloaded at run time; pretrained teachers are imported from
                                     a local checkpoint, see teacher.import_teacher)
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from .errors import D3SError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


class ConvNet(nn.Module):
    """ConvNet-D (depth x [conv3x3-width, BatchNorm, ReLU, avg-pool 2]) + linear head.

    BatchNorm (not the instance norm of DC/DSA/MTT) because D3S matches BN-layer statistics.
    ReLU is not in-place so a hooked BN output is never overwritten.
    """

    def __init__(
        self, num_classes: int, in_chans: int, image_size: int, depth: int = 3, width: int = 128, norm: str = "batch"
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_chans, image_size
        for _ in range(depth):
            norm_layer = nn.BatchNorm2d(width) if norm == "batch" else nn.GroupNorm(width, width)  # instance norm
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), norm_layer, nn.ReLU()]
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * size * size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _convnet_factory(depth: int, width: int, norm: str):
    def build(num_classes: int, in_chans: int, image_size: int) -> nn.Module:
        return ConvNet(num_classes, in_chans, image_size, depth=depth, width=width, norm=norm)

    return build


for _d in (3, 4):
    for _suffix, _width in (("", 128), ("_w64", 64), ("_w32", 32)):
        register(f"convnet{_d}{_suffix}")(_convnet_factory(_d, _width, "batch"))
        register(f"convnet{_d}{_suffix}_in")(_convnet_factory(_d, _width, "instance"))


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _timm_model(name: str, num_classes: int, in_chans: int) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise D3SError(f"unknown architecture {name!r}: not built in ({', '.join(list_models())}) and {e}") from None


def cifar_stem(model: nn.Module, in_chans: int, name: str) -> nn.Module:
    """Replace a timm ResNet's 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv (small images)."""
    if not (isinstance(getattr(model, "conv1", None), nn.Conv2d) and hasattr(model, "maxpool")):
        raise D3SError(f"architecture {name!r}: the _cifar stem applies to timm ResNet-family models only")
    model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """A randomly initialised model for `num_classes` classes and `in_chans`-channel inputs."""
    if name in _REGISTRY:
        return _REGISTRY[name](num_classes=num_classes, in_chans=in_chans, image_size=image_size)
    if re.fullmatch(r"convnet\d+.*", name):
        raise D3SError(f"unknown architecture {name!r}; built-in: {', '.join(list_models())}")
    if name.endswith("_cifar"):
        return cifar_stem(_timm_model(name.removesuffix("_cifar"), num_classes, in_chans), in_chans, name)
    return _timm_model(name, num_classes, in_chans)


def bn_layers(model: nn.Module, where: str = "model") -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The BatchNorm layers whose inputs D3S models as Gaussians, in forward-definition order."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        raise D3SError(
            f"{where} has no BatchNorm layers: D3S matches the statistics of BatchNorm inputs, "
            "so the teacher must contain nn.BatchNorm1d/2d layers"
        )
    return layers
