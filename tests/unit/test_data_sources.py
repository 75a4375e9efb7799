"""Every dataset source on small fixture data written by the tests."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from d3s.data import BlockShuffleSampler, load_dataset
from d3s.dataset_spec import DatasetSpec
from d3s.errors import D3SError

CLASSES = ["cat", "dog", "fox"]


def _png(path, rng, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def _class_folders(root, rng, per_class=3, mode="RGB"):
    for c in CLASSES:
        for i in range(per_class):
            _png(root / c / f"{c}_{i}.png", rng, mode=mode)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _spec(**kw):
    return DatasetSpec.from_dict({"name": "fixture", **kw})


def test_imagefolder_class_folders_rgb_and_grayscale(tmp_path, rng):
    _class_folders(tmp_path / "train", rng)
    _class_folders(tmp_path / "val", rng, per_class=2)
    data = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8))
    assert data.classes == CLASSES and len(data.train) == 9 and len(data.test) == 6
    x, y = data.train[4]
    assert x.dtype == torch.uint8 and x.shape == (3, 8, 8) and int(y) == 1  # sorted folders: cat, dog, fox
    gray = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=6, channels=1))
    assert gray.channels == 1 and gray.train[0][0].shape == (1, 6, 6)
    assert gray.streamed and gray.loader_workers(4) == 3


def test_imagefolder_resizes_shorter_side_then_centre_crops(tmp_path):
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, 10:30] = 255  # a white centre band half the width: survives the centre crop
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / split / "a" / "x.png")
    x, _ = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=10)).train[0]
    assert x.shape == (3, 10, 10) and x.float().mean() > 240  # 40x20 -> 20x10 -> centre 10x10 is white


def test_imagefolder_class_list_sets_the_order(tmp_path, rng):
    _class_folders(tmp_path / "train", rng)
    _class_folders(tmp_path / "val", rng, per_class=1)
    order = tmp_path / "classes.txt"
    order.write_text("fox\ncat\ndog\n")
    data = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8, class_list=str(order)))
    assert data.classes == ["fox", "cat", "dog"]
    assert [int(data.train[i][1]) for i in range(0, 9, 3)] == [0, 1, 2]
    order.write_text("fox\nwolf\n")
    with pytest.raises(D3SError, match=r"classes.txt: classes without a folder.*wolf"):
        load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8, class_list=str(order)))


def test_tiny_imagenet_layout(tmp_path, rng):
    for c in CLASSES:  # train/<wnid>/images/*.JPEG, as distributed
        for i in range(2):
            _png(tmp_path / "train" / c / "images" / f"{c}_{i}.JPEG", rng)
        (tmp_path / "train" / c / f"{c}_boxes.txt").write_text("")
    lines = []
    for i, c in enumerate(["dog", "fox", "cat", "dog"]):
        _png(tmp_path / "val" / "images" / f"val_{i}.JPEG", rng)
        lines.append(f"val_{i}.JPEG\t{c}\t0\t0\t9\t9")
    (tmp_path / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    data = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8))
    assert len(data.train) == 6 and [int(data.train[i][1]) for i in (0, 2, 4)] == [0, 1, 2]
    assert [int(data.test[i][1]) for i in range(4)] == [1, 2, 0, 1]


def test_flat_imagenet_validation_with_label_file(tmp_path, rng):
    _class_folders(tmp_path / "train", rng)
    for i in range(3):
        _png(tmp_path / "val" / f"ILSVRC_val_{i}.png", rng)
    labels = tmp_path / "val_labels.txt"
    labels.write_text("ILSVRC_val_0.png fox\nILSVRC_val_1.png 0\nILSVRC_val_2.png dog\n")  # names or indices
    data = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8, val_labels=str(labels)))
    assert [int(data.test[i][1]) for i in range(3)] == [2, 0, 1]
    labels.write_text("ILSVRC_val_0.png wolf\n")
    with pytest.raises(D3SError, match=r"val_labels.txt:1: label 'wolf' is not a class"):
        load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8, val_labels=str(labels)))


def test_imagefolder_bad_data_names_the_file(tmp_path, rng):
    _class_folders(tmp_path / "train", rng)
    _class_folders(tmp_path / "val", rng, per_class=1)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png")
    data = load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8))
    broken = [i for i, f in enumerate(data.train.files) if f.name == "broken.png"][0]
    with pytest.raises(D3SError, match=r"broken.png: unreadable image"):
        data.train[broken]
    (tmp_path / "train" / "emu").mkdir()
    with pytest.raises(D3SError, match=r"train/emu: class folder has no images"):
        load_dataset(_spec(source="imagefolder", root=str(tmp_path), image_size=8))
    with pytest.raises(D3SError, match="needs the key 'image_size'"):
        _spec(source="imagefolder", root=str(tmp_path))


def _idx(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    dims = array.shape
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes())


def test_torchvision_mnist_folder(tmp_path, rng):
    raw = tmp_path / "MNIST" / "raw"
    for split, n in (("train", 12), ("t10k", 5)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    data = load_dataset(_spec(source="torchvision", torchvision_name="MNIST", root=str(tmp_path)))
    assert len(data.train) == 12 and len(data.test) == 5 and data.channels == 1 and data.native_size == 28
    assert data.classes[0].startswith("0") and int(data.train[3][1]) == 3


def test_torchvision_cifar_style_folder(tmp_path, rng, monkeypatch):
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {
        name: rng.integers(0, 255, (4, 3 * 32 * 32), dtype=np.uint8)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    }
    for name, x in batches.items():
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x, "labels": [0, 1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    # the fixture is not the real CIFAR, so torchvision's md5 check is the one thing bypassed (existence still checked)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    data = load_dataset(_spec(source="torchvision", torchvision_name="CIFAR10", root=str(tmp_path)))
    assert len(data.train) == 20 and data.channels == 3 and data.native_size == 32
    x, y = data.train[1]
    expected = batches["data_batch_1"][1].reshape(3, 32, 32)
    assert torch.equal(x, torch.from_numpy(expected)) and int(y) == 1


def test_torchvision_missing_folder_is_explained(tmp_path):
    with pytest.raises(D3SError, match="MNIST train split not found there"):
        load_dataset(_spec(source="torchvision", torchvision_name="MNIST", root=str(tmp_path)))


def _h5(path, n_train=300, size=8, channels=3, chunk=64):
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        for split, n in (("train", n_train), ("test", 40)):
            f.create_dataset(
                f"{split}/images",
                data=rng.integers(0, 255, (n, size, size, channels), dtype=np.uint8),
                chunks=(min(chunk, n), size, size, channels),
                compression="gzip",
            )
            f[f"{split}/labels"] = np.arange(n) % 3
        f.attrs["classes"] = CLASSES


def test_hdf5_in_memory_and_streamed_read_the_same_images(tmp_path):
    path = tmp_path / "d.h5"
    _h5(path)
    small = load_dataset(_spec(source="hdf5", path=str(path)))
    streamed = load_dataset(_spec(source="hdf5", path=str(path), memory_limit_mb=0))
    assert not small.streamed and streamed.streamed
    for i in (0, 77, 299):
        assert torch.equal(small.train[i][0], streamed.train[i][0]) and int(small.train[i][1]) == int(
            streamed.train[i][1]
        )
    loader = torch.utils.data.DataLoader(streamed.train, batch_size=50, num_workers=1)  # the handle survives a worker
    assert sum(len(y) for _, y in loader) == 300


def test_block_shuffle_sampler_is_a_permutation_of_local_blocks():
    g = torch.Generator().manual_seed(0)
    order = list(BlockShuffleSampler(1000, block=64, window_blocks=4, generator=g))
    assert sorted(order) == list(range(1000)) and order != list(range(1000))
    window = order[:256]  # the first window draws from exactly 4 blocks
    assert len({i // 64 for i in window}) <= 4


@pytest.mark.parametrize("memory_limit_mb", [2048, 0])
def test_image_size_below_the_native_size_is_one_antialiased_resize_for_every_stage(tmp_path, memory_limit_mb):
    """Every reader (teacher, statistics, views, students, test) gets the same resized pixels, so no
    crop view has to shrink the image itself (a bilinear grid sample would alias)."""
    import torch.nn.functional as F

    from d3s.data import training_sampler

    path = tmp_path / "d.h5"
    _h5(path, size=16)
    native = load_dataset(_spec(source="hdf5", path=str(path), memory_limit_mb=memory_limit_mb))
    small = load_dataset(_spec(source="hdf5", path=str(path), memory_limit_mb=memory_limit_mb, image_size=8))
    assert small.native_size == small.image_size == 8 and native.native_size == 16
    for split in ("train", "test"):
        x16, y16 = getattr(native, split)[5]
        x8, y8 = getattr(small, split)[5]
        expected = F.interpolate(x16[None].float(), size=(8, 8), mode="bilinear", antialias=True)[0]
        assert x8.dtype == torch.uint8 and x8.shape == (3, 8, 8) and int(y8) == int(y16)
        assert torch.equal(x8, expected.round().clamp(0, 255).to(torch.uint8))
    assert torch.equal(small.train.labels, native.train.labels)
    sampler = training_sampler(small.train, torch.Generator().manual_seed(0))
    assert isinstance(sampler, BlockShuffleSampler) == (memory_limit_mb == 0)  # streamed reads keep chunk order
    assert pickle.loads(pickle.dumps(small.train))[7][0].shape == (3, 8, 8)  # crosses into a DataLoader worker


def test_real_images_are_read_in_chunks_with_the_same_result(tmp_path):
    from d3s.baselines import real_choice, real_images

    path = tmp_path / "d.h5"
    _h5(path, size=16)
    data = load_dataset(_spec(source="hdf5", path=str(path)))
    chosen = real_choice(data, ipc=4, seed=0)
    slots = [(i, c) for i in range(4) for c in range(3)]
    for size in (16, 8):  # as stored, and resized to a smaller teacher
        whole = real_images(data, chosen, slots, size, chunk=1000)
        assert whole.dtype == torch.uint8 and whole.shape == (12, 3, size, size)
        assert torch.equal(real_images(data, chosen, slots, size, chunk=5), whole)
    assert torch.equal(real_images(data, chosen, slots, 16)[4], data.train[int(chosen[1][1])][0])  # slot (1, 1)


def test_digits_are_read_as_scikit_learn_loads_them():
    """The digits source reads scikit-learn's shipped file without importing scikit-learn (start-up)."""
    from sklearn.datasets import load_digits

    from d3s.data import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    np.testing.assert_array_equal(images, bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)
