"""timm's pretrained weights as a local safetensors file, for `teachers.pretrained` entries
whose checkpoint is `timm:<model name>`.

The only stage that may use the network: the workflow runs it on the submitting node (a local
rule); every later job reads the written file with the hub offline. Nothing here executes
pickled code that timm itself would not (timm loads hub weights as safetensors, or with
torch.load(weights_only=True)).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .artifacts import atomic_path
from .errors import D3SError
from .runtime import log


def _hub_settings() -> str:
    """Where huggingface_hub looks, as it is configured in this process (for error messages)."""
    try:
        from huggingface_hub import constants

        offline, cache = bool(constants.HF_HUB_OFFLINE), constants.HF_HUB_CACHE
    except Exception:  # noqa: BLE001 - only for a message
        offline, cache = os.environ.get("HF_HUB_OFFLINE", "") == "1", os.environ.get("HF_HUB_CACHE", "?")
    return (
        f"HF_HUB_OFFLINE={int(offline)}, hub cache {cache} "
        f"(HF_HUB_CACHE, else HF_HOME/hub), HF_HOME={os.environ.get('HF_HOME', '(unset)')}"
    )


def _cached_revision(hf_hub_id: str | None) -> str:
    """The hub commit the weights were read from, when they came through the local cache."""
    if not hf_hub_id:
        return ""
    try:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(hf_hub_id, filename)
            if isinstance(path, str):
                m = re.search(r"[/\\]snapshots[/\\]([^/\\]+)[/\\]", path)
                return m.group(1) if m else ""
    except Exception:  # noqa: BLE001 - provenance only
        pass
    return ""


def _pretrained_cfg(name: str):
    """timm's pretrained config for `name` ('arch' or 'arch.tag'), or a D3SError saying why there is none."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        raise D3SError(
            f"timm model {name!r}: unknown to timm {timm.__version__} "
            f"(names with weights: timm.list_pretrained('{name.split('.')[0]}*'))"
        )
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as e:  # a wrong tag, or an architecture without any weights
        raise D3SError(
            f"timm model {name!r}: no pretrained weights by that name ({e}); "
            f"tags: {', '.join(timm.list_pretrained(name.split('.')[0])) or 'none'}"
        ) from None
    if not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise D3SError(f"timm model {name!r}: timm {timm.__version__} lists no source for its weights")
    return cfg


def fetch_pretrained(name: str, out: str | os.PathLike) -> dict:
    """Write the state dict of `timm.create_model(name, pretrained=True)` to `out` (safetensors).

    Uses the network or the local Hugging Face cache, as huggingface_hub is configured
    (HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE). The file's metadata names the timm model, its
    weights' source (hf_hub_id, tag, url, cached revision) and the normalisation they expect.
    """
    import timm
    from safetensors.torch import save_file

    cfg = _pretrained_cfg(name)
    source = f"the Hugging Face hub ({cfg.hf_hub_id})" if cfg.hf_hub_id else cfg.url or cfg.file
    log.info("timm %s: pretrained weights %s from %s; %s", timm.__version__, name, source, _hub_settings())
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - network, cache and file errors all mean: no weights here
        first = (str(e).strip().splitlines() or [""])[0]
        raise D3SError(
            f"timm model {name!r}: could not get its pretrained weights from {source} "
            f"({type(e).__name__}: {first}); {_hub_settings()}. Run `d3s fetch-pretrained` where "
            "huggingface.co is reachable (HF_HUB_OFFLINE unset), or fill that cache first, e.g. "
            f"`hf download {cfg.hf_hub_id or '<repo>'}` with the same HF_HOME / HF_HUB_CACHE"
        ) from None
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        state[key] = t.clone() if ptr in seen else t  # safetensors refuses tensors that share a storage
        seen.add(ptr)
    pcfg = getattr(model, "pretrained_cfg", None) or cfg.to_dict()
    metadata = {
        "format": "pt",
        "d3s.source": "timm",
        "timm.model": name,
        "timm.architecture": str(pcfg.get("architecture") or cfg.architecture),
        "timm.tag": str(pcfg.get("tag") or ""),
        "timm.hf_hub_id": str(pcfg.get("hf_hub_id") or ""),
        "timm.hf_hub_revision": _cached_revision(pcfg.get("hf_hub_id")),
        "timm.url": str(pcfg.get("url") or ""),
        "timm.version": timm.__version__,
        "timm.pretrained_cfg": json.dumps(pcfg, sort_keys=True, default=str),
    }
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    n = sum(t.numel() for t in state.values())
    log.info(
        "wrote %s: %d tensors, %d values; %d classes, %s inputs, mean %s std %s (give the dataset this normalisation)",
        Path(out),
        len(state),
        n,
        pcfg.get("num_classes", 0),
        pcfg.get("input_size"),
        pcfg.get("mean"),
        pcfg.get("std"),
    )
    return metadata
