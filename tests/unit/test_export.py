"""d3s export: the layouts other tools read hold exactly the artifact's pixels, classes in its order."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from d3s.artifacts.images import load_synthetic
from d3s.artifacts.labels import SoftLabelStore

from ..conftest import run_cli


def _by_slot(s):
    return {(int(c), int(i)): s.images[r] for r, (c, i) in enumerate(zip(s.labels, s.ipc_index))}


def _png(path) -> np.ndarray:
    a = np.asarray(Image.open(path))
    return a[..., None] if a.ndim == 2 else a


def test_image_folders_round_trip_exactly_in_class_order(tiny, tmp_path):
    from torchvision.datasets import ImageFolder

    s = load_synthetic(tiny["images"])
    out = tmp_path / "folders"
    run_cli("export", "--images", tiny["images"], "--format", "folders", "--out", out)
    assert (out / "classes.txt").read_text().split() == s.classes
    folder = ImageFolder(str(out))
    # ImageFolder's sorted folder names give back the artifact's class indices
    assert [c.split("_", 1)[1] for c in folder.classes] == s.classes
    slots = _by_slot(s)
    assert len(folder.samples) == len(s.labels)
    for path, label in folder.samples:
        assert np.array_equal(_png(path), slots[(label, int(path.rsplit("/", 1)[1][:3]))])


def test_sre2l_layout_names_and_pixels(tiny, tmp_path):
    s = load_synthetic(tiny["images"])
    out = tmp_path / "sre2l"
    run_cli("export", "--images", tiny["images"], "--format", "sre2l", "--out", out)
    for (c, i), pixels in _by_slot(s).items():
        assert np.array_equal(_png(out / f"new{c:03d}" / f"class{c:03d}_id{i:03d}.png"), pixels)
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt"] + [f"new{c:03d}" for c in range(len(s.classes))]


def test_ddranking_tensors_are_class_major_normalised_and_invertible(tiny, tmp_path):
    s = load_synthetic(tiny["images"])
    out = tmp_path / "dd"
    run_cli("export", "--images", tiny["images"], "--labels", tiny["labels"], "--format", "ddranking", "--out", out)
    images, soft, hard = (torch.load(out / f, weights_only=True) for f in ("images.pt", "labels.pt", "hard_labels.pt"))
    meta = json.loads((out / "meta.json").read_text())
    ipc, n_classes = meta["ipc"], len(s.classes)
    assert images.shape == (ipc * n_classes, s.images.shape[3], s.images.shape[1], s.images.shape[2])
    assert images.dtype == torch.float32 and torch.equal(hard, torch.arange(n_classes).repeat_interleave(ipc))
    # undoing the normalisation gives back the uint8 pixels exactly
    mean, std = (torch.tensor(meta[k])[None, :, None, None] for k in ("mean", "std"))
    pixels = ((images * std + mean) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    slots = _by_slot(s)
    for row, (c, i) in enumerate((c, i) for c in range(n_classes) for i in range(ipc)):
        assert np.array_equal(pixels[row], slots[(c, i)])
    # one soft label per image: the stored logits of every label epoch, averaged
    store = SoftLabelStore(tiny["labels"], s, str(tiny["images"]))
    rows = torch.arange(len(s.labels))
    expected = torch.stack([store.epoch(e)[2][rows] for e in range(store.epochs)]).mean(0)
    store.close()
    order = np.lexsort((s.ipc_index, s.labels))
    assert torch.allclose(soft, expected[torch.from_numpy(order)], atol=1e-6)


def test_export_refuses_an_existing_folder_and_leaves_nothing_half_written(tiny, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    result = run_cli("export", "--images", tiny["images"], "--out", out, expect_ok=False)
    assert result.exit_code != 0 and "already exists" in result.output
    assert list(out.iterdir()) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
