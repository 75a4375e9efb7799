"""`d3s fetch-pretrained`: timm's pretrained weights to a local safetensors file.

No network here: each test writes a local Hugging Face hub cache (the layout huggingface_hub
reads offline) holding a randomly initialised timm model, and runs the command against it with
HF_HUB_OFFLINE=1, in a fresh process, since huggingface_hub reads its environment at import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from d3s.errors import D3SError

MODEL = "test_resnet.r160_in1k"  # timm's 0.5 M-parameter test ResNet: 1000 classes, 3 channels
REVISION = "0123456789abcdef0123456789abcdef01234567"


def write_hub_cache(cache: Path, name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Put randomly initialised weights for timm model `name` where huggingface_hub finds
    `timm.create_model(name, pretrained=True)`'s weights: <cache>/models--<org>--<repo>/
    refs/main (a commit hash) and snapshots/<hash>/model.safetensors. Returns the state dict."""
    import timm
    from safetensors.torch import save_file

    org, repo = timm.models.get_pretrained_cfg(name).hf_hub_id.split("/")
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
    root = cache / f"models--{org}--{repo}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file(state, str(snapshot / "model.safetensors"))
    return state


def hub_env(home: Path) -> dict[str, str]:
    """Environment of an offline process reading the cache under `home`."""
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}


def fetch(home: Path, name: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **hub_env(home)}
    return subprocess.run(
        [sys.executable, "-m", "d3s", "fetch-pretrained", "--model", name, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf")
    return home, write_hub_cache(home / "hub", MODEL)


@pytest.fixture(scope="module")
def fetched(hub, tmp_path_factory):
    home, state = hub
    out = tmp_path_factory.mktemp("fetched") / "weights" / f"{MODEL}.safetensors"
    proc = fetch(home, MODEL, out)
    assert proc.returncode == 0, proc.stderr
    return out, state


def test_fetch_pretrained_writes_the_cached_weights(fetched):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out, state = fetched
    written = load_file(str(out))
    assert written.keys() == state.keys()
    for key, tensor in state.items():
        assert torch.equal(written[key], tensor), key
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["timm.model"] == MODEL and meta["timm.architecture"] == "test_resnet"
    assert meta["timm.hf_hub_id"] == f"timm/{MODEL}" and meta["timm.tag"] == "r160_in1k"
    assert meta["timm.hf_hub_revision"] == REVISION  # the cache's snapshot the weights came from
    assert '"mean": [0.5, 0.5, 0.5]' in meta["timm.pretrained_cfg"]  # the normalisation they expect
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_a_model_absent_from_the_offline_cache_is_a_clear_error(hub, tmp_path):
    home, _ = hub
    out = tmp_path / "vit.safetensors"
    proc = fetch(home, "test_vit.r160_in1k", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    error = proc.stderr.split("Error: ", 1)[1]
    assert "timm model 'test_vit.r160_in1k': could not get its pretrained weights" in error
    assert "timm/test_vit.r160_in1k" in error and "HF_HUB_OFFLINE=1" in error
    assert f"hub cache {home / 'hub'}" in error and "HF_HUB_CACHE" in error and "HF_HOME" in error
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_net", "timm model 'no_such_net': unknown to timm"),
        ("resnet18.no_such_tag", "timm model 'resnet18.no_such_tag': no pretrained weights by that name"),
    ],
)
def test_names_without_timm_weights_are_refused_before_any_download(name, message, tmp_path):
    from d3s.hub import fetch_pretrained

    with pytest.raises(D3SError, match=message) as err:
        fetch_pretrained(name, tmp_path / "w.safetensors")
    if "." in name:
        assert "resnet18.a1_in1k" in str(err.value)  # the tags that exist
    assert not list(tmp_path.iterdir())


def test_fetched_weights_fit_the_model_import_teacher_builds(fetched):
    """import-teacher's model for arch = the timm name (the default for timm:<name>) takes them as they are."""
    from safetensors.torch import load_file

    from d3s.artifacts.teacher import read_checkpoint
    from d3s.models import build_model

    out, _ = fetched
    model = build_model(MODEL, 1000, 3, 32)
    model.load_state_dict(read_checkpoint(out))  # strict: every key and shape
    assert load_file(str(out)).keys() == model.state_dict().keys()
