"""The architecture registry and the pretrained-teacher import path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from d3s.artifacts.teacher import load_teacher
from d3s.errors import D3SError
from d3s.models import bn_layers, build_model, list_models

from ..conftest import DIGITS, FAST, run_cli

PRESET_ARCHS = ["resnet18_cifar", "resnet18", "resnet50", "mobilenetv3_small_100", "efficientnet_b0"]


@pytest.mark.parametrize("name", list_models())
def test_builtin_convnets_build_for_any_channels_and_size(name):
    for chans, size in ((1, 8), (3, 32)):
        model = build_model(name, num_classes=7, in_chans=chans, image_size=size).eval()
        assert model(torch.randn(2, chans, size, size)).shape == (2, 7)
        if name.endswith("_in"):  # instance norm: a student, never a teacher
            assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.modules()) >= 3
            with pytest.raises(D3SError, match="no BatchNorm"):
                bn_layers(model)
        else:
            assert len(bn_layers(model)) >= 3


@pytest.mark.parametrize("name", PRESET_ARCHS)
def test_timm_architectures_of_the_presets_build(name):
    model = build_model(name, num_classes=5, in_chans=1, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    assert bn_layers(model)


def test_cifar_stem_keeps_resolution():
    model = build_model("resnet18_cifar", 10, 3, 32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-1] == 4  # 32 px / 8 (three stride-2 stages); the ImageNet stem would give 1
    with pytest.raises(D3SError, match="ResNet-family"):
        build_model("vit_tiny_patch16_224_cifar", 10, 3, 32)


def test_unknown_names_are_explained():
    with pytest.raises(D3SError, match="unknown architecture 'no_such_net'"):
        build_model("no_such_net", 10, 3, 32)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_import_pretrained_teacher_from_a_checkpoint(tiny, tmp_path, fmt):
    teacher = load_teacher(tiny["teacher"])
    state = {k: v.contiguous() for k, v in teacher.model.state_dict().items()}
    if fmt == "safetensors":
        ckpt = tmp_path / "weights.safetensors"
        save_file(state, str(ckpt))
    else:
        ckpt = tmp_path / "weights.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)  # common wrappers
    info = tmp_path / "info.json"
    run_cli("dataset-info", "--data", DIGITS, "--out", info, *FAST)
    assert json.loads(info.read_text())["mean"] == pytest.approx(teacher.mean, rel=1e-6)
    out = tmp_path / "imported.h5"
    run_cli(
        "import-teacher",
        "--data",
        DIGITS,
        "--info",
        info,
        "--arch",
        "convnet3_w32",
        "--checkpoint",
        ckpt,
        "--out",
        out,
        *FAST,
    )
    imported = load_teacher(out)
    assert imported.weights_sha256 == teacher.weights_sha256
    assert imported.test_top1 == pytest.approx(teacher.test_top1)  # same weights, same test split


def test_import_refuses_wrong_classes(tiny, tmp_path):
    wrong = build_model("convnet3_w32", num_classes=5, in_chans=1, image_size=8)
    ckpt = tmp_path / "five.safetensors"
    save_file(wrong.state_dict(), str(ckpt))
    result = run_cli(
        "import-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet3_w32",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path / "t.h5",
        *FAST,
        expect_ok=False,
    )
    assert (
        result.exit_code != 0 and "five.safetensors: weights do not fit 'convnet3_w32' with 10 classes" in result.output
    )
    order = tmp_path / "classes.txt"
    order.write_text("\n".join(["1", "0"] + [str(i) for i in range(2, 10)]))
    teacher_ckpt = tmp_path / "ok.safetensors"
    save_file(load_teacher(tiny["teacher"]).model.state_dict(), str(teacher_ckpt))
    result = run_cli(
        "import-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet3_w32",
        "--checkpoint",
        teacher_ckpt,
        "--class-list",
        order,
        "--out",
        tmp_path / "t.h5",
        *FAST,
        expect_ok=False,
    )
    assert "class order mismatch" in result.output and "classes.txt" in result.output
    assert not (tmp_path / "t.h5").exists()
