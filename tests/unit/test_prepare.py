"""The prepare stage: an image folder packed once gives the stages the pixels the raw path decodes."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from d3s.data import decode_image, load_dataset
from d3s.dataset_spec import DatasetSpec
from d3s.errors import D3SError
from d3s.prepare import merge_packed, pack_part, part_rows, write_index
from tests.imagenet_like import CIFAR, make_imagenet_like

pytestmark = pytest.mark.skipif(not CIFAR.exists() and not os.environ.get("CI"), reason="needs ../shared/datasets")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagenet_like(tmp_path_factory.mktemp("inlike"), classes=12, per_class=3, val_per_class=2)


def folder_spec(folder, **kw) -> DatasetSpec:
    return DatasetSpec.from_dict(
        {
            "name": "inlike",
            "source": "imagefolder",
            "root": str(folder.root),
            "val_labels": str(folder.val_labels),
            "class_list": str(folder.class_list),
            "image_size": 24,
            "eval_resize": 28,
            "num_classes": 12,
            **kw,
        }
    )


def pack(folder, tmp_path, parts=2, **kw) -> str:
    spec = folder_spec(folder, **kw)
    write_index(spec, tmp_path / "index.h5", seed=3)
    paths = []
    for k in reversed(range(parts)):  # any order of parts
        pack_part(str(tmp_path / "index.h5"), k, parts, str(tmp_path / f"part{k}.h5"), threads=2)
        paths.append(str(tmp_path / f"part{k}.h5"))
    merge_packed(paths, str(tmp_path / "data.h5"))
    return str(tmp_path / "data.h5")


def test_part_rows_cover_every_row_once():
    for n in (0, 1, 7, 100):
        for parts in (1, 3, 8):
            rows = [i for k in range(parts) for i in range(n)[part_rows(n, k, parts)]]
            assert rows == list(range(n))


def test_decode_is_the_evaluation_protocol(folder):
    """Resize(28) on the shorter side then CenterCrop(24), as torchvision's transforms do it."""
    from PIL import Image
    from torchvision.transforms import v2

    path = next((folder.root / "val").iterdir())
    with Image.open(path) as im:
        ref = v2.Compose(
            [v2.Resize(28, interpolation=v2.InterpolationMode.BILINEAR, antialias=True), v2.CenterCrop(24)]
        )(im.convert("RGB"))
    ours = decode_image(path, 24, 3, resize_to=28)
    assert ours.shape == (3, 24, 24)
    # PIL's resize is torchvision's on PIL images; sizes round alike: the pixels are identical
    assert torch.equal(ours, torch.from_numpy(np.array(ref)).permute(2, 0, 1))


def test_packed_file_holds_the_raw_paths_pixels_in_shuffled_order(folder, tmp_path):
    path = pack(folder, tmp_path)
    raw = load_dataset(folder_spec(folder))
    packed = load_dataset(DatasetSpec.from_dict({"name": "inlike", "source": "hdf5", "path": path}))
    assert packed.classes == raw.classes == folder.classes
    assert (packed.native_size, packed.train_size, packed.eval_resize) == (24, 28, 28)
    with h5py.File(tmp_path / "index.h5", "r") as f:
        order = f["train/order"][()]
    assert sorted(order.tolist()) == list(range(len(raw.train))) and order.tolist() != sorted(order.tolist())
    for row, i in enumerate(order):
        x, y = packed.train[row]
        rx, ry = raw.train[int(i)]
        assert torch.equal(x, rx) and int(y) == int(ry)
    for j in range(len(raw.test)):
        assert torch.equal(packed.test[j][0], raw.test[j][0]) and int(packed.test[j][1]) == int(raw.test[j][1])
    # a training image seen as the test protocol sees a test image: its centre 24 px of the stored 28
    assert packed.train_plain[0][0].shape == (3, 24, 24)
    assert torch.equal(packed.train_plain[0][0], packed.train[0][0][:, 2:26, 2:26])


def test_packing_is_independent_of_the_number_of_parts(folder, tmp_path):
    one, three = (tmp_path / "1", tmp_path / "3")
    one.mkdir(), three.mkdir()
    a, b = pack(folder, one, parts=1), pack(folder, three, parts=3)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for key in ("train/images", "train/labels", "test/images", "test/labels"):
            assert np.array_equal(fa[key][()], fb[key][()]), key
        assert json.loads(fa.attrs["config"]) == json.loads(fb.attrs["config"])


def test_evaluation_loads_only_the_test_split(folder, tmp_path):
    path = pack(folder, tmp_path)
    data = load_dataset(DatasetSpec.from_dict({"name": "inlike", "source": "hdf5", "path": path}), splits=("test",))
    assert data.train is None and len(data.test) == folder.n_val


def test_merge_refuses_missing_or_foreign_parts(folder, tmp_path):
    spec = folder_spec(folder)
    write_index(spec, tmp_path / "index.h5")
    for k in range(2):
        pack_part(str(tmp_path / "index.h5"), k, 2, str(tmp_path / f"p{k}.h5"))
    with pytest.raises(D3SError, match="expected parts 0..1"):
        merge_packed([str(tmp_path / "p0.h5")], str(tmp_path / "out.h5"))
    other = tmp_path / "other"
    other.mkdir()
    write_index(folder_spec(folder, eval_resize=32), other / "index.h5")
    pack_part(str(other / "index.h5"), 1, 2, str(other / "p1.h5"))
    with pytest.raises(D3SError, match="another dataset spec"):
        merge_packed([str(tmp_path / "p0.h5"), str(other / "p1.h5")], str(tmp_path / "out.h5"))
    assert not (tmp_path / "out.h5").exists()  # nothing half-written
    with pytest.raises(D3SError, match="use fewer parts"):
        pack_part(str(tmp_path / "index.h5"), 0, 50, str(tmp_path / "p.h5"))


def test_eval_resize_is_checked(folder):
    with pytest.raises(D3SError, match="smaller than image_size"):
        folder_spec(folder, eval_resize=20)
    with pytest.raises(D3SError, match="applies to imagefolder"):
        DatasetSpec.from_dict({"source": "digits", "eval_resize": 10})


def test_a_packed_file_refuses_another_image_size(folder, tmp_path):
    path = pack(folder, tmp_path)
    with pytest.raises(D3SError, match="pack it again"):
        load_dataset(DatasetSpec.from_dict({"name": "inlike", "source": "hdf5", "path": path, "image_size": 16}))


def test_a_torchvision_source_packs_to_the_images_it_loads(tmp_path):
    from tests.unit.test_data_sources import _idx

    rng = np.random.default_rng(0)
    raw = tmp_path / "src" / "MNIST" / "raw"
    for split, n in (("train", 12), ("t10k", 5)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    spec = DatasetSpec.from_dict(
        {"name": "m", "source": "torchvision", "torchvision_name": "MNIST", "root": str(tmp_path / "src")}
    )
    write_index(spec, tmp_path / "index.h5", seed=1)
    pack_part(str(tmp_path / "index.h5"), 0, 1, str(tmp_path / "part.h5"))
    merge_packed([str(tmp_path / "part.h5")], str(tmp_path / "data.h5"))
    raw_data = load_dataset(spec)
    packed = load_dataset(DatasetSpec.from_dict({"name": "m", "source": "hdf5", "path": str(tmp_path / "data.h5")}))
    assert packed.classes == raw_data.classes and packed.channels == 1
    with h5py.File(tmp_path / "index.h5") as f:
        order = f["train/order"][()]
    for split, rows in (("train", order), ("test", np.arange(5))):
        ours, theirs = getattr(packed, split), getattr(raw_data, split)
        for i, r in enumerate(rows):
            assert torch.equal(ours[i][0], theirs[int(r)][0]) and int(ours[i][1]) == int(theirs[int(r)][1])


def test_protocol_hash_records_eval_resize_and_keeps_older_hashes():
    from d3s.summary import protocol_hash

    base = {"protocol": {"epochs": 300, "batch_size": 1024, "lr": 0.001, "relabel": None}}
    with_resize = {"protocol": {**base["protocol"], "eval_resize": 256}}
    other = {"protocol": {**base["protocol"], "eval_resize": 288}}
    assert len({protocol_hash(base), protocol_hash(with_resize), protocol_hash(other)}) == 3
    assert protocol_hash({"protocol": {**base["protocol"], "eval_resize": None}}) == protocol_hash(base)
