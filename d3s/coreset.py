"""Coreset selection on a teacher's penultimate features: herding and k-center greedy.

Both are greedy, so the first k picks of a class are the same for every IPC >= k (IPC 10's
set extends IPC 1's, as the random baseline's does), and both are deterministic given the
features. Features are L2-normalised per image (as iCaRL's herding), concatenated over teachers.

- herding (Welling 2009; iCaRL, Rebuffi et al. 2017): each pick brings the mean of the picked
  features closest to the class mean -- a set whose first moment matches the class's.
- k-center greedy (Sener & Savarese 2018): each pick is the image farthest from its nearest
  picked image -- a set that covers the class's feature space. We take it as the second
  coreset because it is the other standard coreset of the dataset-distillation literature
  (DeepCore, RethinkDC) and, unlike EL2N or forgetting scores, needs only the teacher, not
  the training dynamics of extra networks. It starts from the image nearest the class mean.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import evaluation_loader
from .distributed import ranks
from .errors import D3SError
from .runtime import log, prepare_input, to_device
from .transforms import Normalizer, resize

SELECTIONS = ("random", "herding", "kcenter")


def herding_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of `k` rows of `features` [n, d], in pick order, by kernel herding on the mean."""
    f = features.double()
    mu, total = f.mean(0), torch.zeros(f.shape[1], dtype=torch.float64)
    taken = torch.zeros(len(f), dtype=torch.bool)
    order = []
    for t in range(1, k + 1):
        # distance of the running mean after adding each candidate to the class mean
        gap = ((total[None] + f) / t - mu[None]).square().sum(1)
        gap[taken] = float("inf")
        i = int(gap.argmin())
        order.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(order, dtype=torch.long)


def kcenter_order(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of `k` rows of `features` [n, d], in pick order, by k-center greedy (farthest first)."""
    f = features.double()
    first = int((f - f.mean(0)).square().sum(1).argmin())
    nearest = (f - f[first]).square().sum(1)  # squared distance to the nearest picked row
    nearest[first] = -1.0  # a picked row is never picked again (duplicate features tie at 0)
    order = [first]
    for _ in range(k - 1):
        i = int(nearest.argmax())
        order.append(i)
        nearest = torch.minimum(nearest, (f - f[i]).square().sum(1))
        nearest[order] = -1.0
    return torch.tensor(order, dtype=torch.long)


ORDERS = {"herding": herding_order, "kcenter": kcenter_order}


def last_linear(model: nn.Module, where: str) -> nn.Linear:
    """The classifier: the last nn.Linear of the model (its input is the penultimate feature)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise D3SError(f"{where}: no nn.Linear classifier whose input could serve as the penultimate feature")
    return linears[-1]


@torch.no_grad()
def penultimate_features(
    models: list[nn.Module],
    dataset,
    normalizer: Normalizer,
    image_size: int,
    device,
    batch_size: int = 512,
    workers: int = 0,
) -> torch.Tensor:
    """fp16 [n, sum of dims] on the host: each model's L2-normalised classifier input, per image."""
    captured: list[torch.Tensor] = []
    hooks = [
        last_linear(m, "teacher").register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].flatten(1)))
        for m in models
    ]
    for m in models:
        m.eval()
    out = None  # allocated once its width is known: n x dims x 2 bytes is the job's one large buffer
    try:
        loader = evaluation_loader(dataset, batch_size, workers, device, ranks())
        start = 0
        for step, (x, _) in enumerate(loader):
            x = prepare_input(resize(normalizer.from_uint8(to_device(x, device)), image_size))
            captured.clear()
            for m in models:
                m(x)
            feats = torch.cat([nn.functional.normalize(c.float(), dim=1) for c in captured], 1).half().cpu()
            if out is None:
                out = torch.empty(len(dataset), feats.shape[1], dtype=torch.float16)
            out[start : start + len(feats)] = feats
            start += len(feats)
            if (step + 1) % max(1, len(loader) // 10) == 0:
                log.info("features: %d/%d batches", step + 1, len(loader))
    finally:
        for h in hooks:
            h.remove()
    return out


def coreset_choice(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ipc: int,
    selection: str,
    class_names: list[str] | None = None,
) -> list[torch.Tensor]:
    """[class][IPC index] -> training-set index, the class's greedy picks in order."""
    order_of = ORDERS[selection]
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < ipc:
            name = class_names[c] if class_names else c
            raise D3SError(f"class {name!r} has {len(idx)} training images, fewer than IPC {ipc}")
        chosen.append(idx[order_of(features[idx].float(), ipc)])
    return chosen
