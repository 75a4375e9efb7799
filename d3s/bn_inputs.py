"""A network's BatchNorm inputs, recorded on each forward pass: what `extract-stats` accumulates over
the real data and `distill` matches on the synthetic images."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .models import bn_layers


class BNInputRecorder(contextlib.AbstractContextManager):
    """Records the input of every BatchNorm layer of a model on each forward pass."""

    def __init__(self, model: nn.Module, where: str = "model"):
        self.layers = bn_layers(model, where)
        self.names = [n for n, _ in self.layers]
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles = [m.register_forward_pre_hook(self._hook(i)) for i, (_, m) in enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(_module, args):
            self.inputs[i] = args[0]

        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self.inputs = [None] * len(self.layers)
        return False
