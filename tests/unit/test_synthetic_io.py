"""Images artifacts at scale: the streaming merge writes what the in-memory merge wrote, plots read only what they draw."""

from __future__ import annotations

import dataclasses

import h5py
import matplotlib.axes
import numpy as np
import pytest

from d3s.artifacts import images as synthetic
from d3s.artifacts.images import (
    SyntheticSet,
    load_synthetic,
    merge_synthetic_to,
    read_header,
    read_rows,
    save_synthetic,
)
from d3s.errors import D3SError
from d3s.plots import drawn_rows, image_grid, plot_images, plot_losses

CLASSES = [f"n{i:03d}" for i in range(5)]
SIZE = 6  # px: rows of 6x6x3 uint8 images are 108 B


def reference_merge(paths: list[str]) -> SyntheticSet:
    """What a merge must hold, stated independently of merge_synthetic_to: every shard's rows in memory,
    ordered by (IPC index, class); the first shard's description; loss curves by block name; the shard list."""
    shards = [load_synthetic(p) for p in paths]
    rows = sorted(
        ((int(i), int(c), image) for s in shards for i, c, image in zip(s.ipc_index, s.labels, s.images)),
        key=lambda row: row[:2],
    )
    curves = {block: c for s in shards for block, c in s.loss_curves.items()}
    return dataclasses.replace(
        shards[0],
        images=np.stack([r[2] for r in rows]),
        labels=np.array([r[1] for r in rows], dtype=np.int64),
        ipc_index=np.array([r[0] for r in rows], dtype=np.int64),
        loss_curves=dict(sorted(curves.items())),
        inputs={"shards": [str(p) for p in paths], **{k: v for k, v in shards[0].inputs.items() if k != "shard"}},
    )


def make_shard(
    path, ipc_range: tuple[int, int], class_range: tuple[int, int], rng, shuffle: bool = False, **overrides
) -> str:
    """A shard of random images for IPC indices x classes, rows in distill's order (IPC, class) or shuffled."""
    ipc_index, labels = (a.ravel() for a in np.meshgrid(np.arange(*ipc_range), np.arange(*class_range), indexing="ij"))
    if shuffle:
        perm = rng.permutation(len(labels))
        ipc_index, labels = ipc_index[perm], labels[perm]
    block = f"i{ipc_range[0]}-{ipc_range[1]}_c{class_range[0]}-{class_range[1]}"
    fields = dict(
        images=rng.integers(0, 256, (len(labels), SIZE, SIZE, 3), dtype=np.uint8),
        labels=labels.astype(np.int64),
        ipc_index=ipc_index.astype(np.int64),
        classes=CLASSES,
        method="d3s",
        teachers=["abc", "def"],
        norm_mean=[0.5, 0.4, 0.3],
        norm_std=[0.2, 0.25, 0.3],
        hflip=True,
        config={"iterations": 3, "lr": 0.1},
        seed=7,
        loss_curves={block: {"total": rng.random(3), "ce": rng.random(3)}},
        inputs={"shard": block, "stats": ["s.h5"]},
    )
    fields.update(overrides)
    save_synthetic(path, SyntheticSet(**fields))
    return str(path)


@pytest.fixture
def shards(tmp_path):
    """4 IPC x 5 classes as blocks of IPC and of classes, given out of order, some with shuffled rows."""
    rng = np.random.default_rng(0)
    blocks = [((2, 4), (0, 5), False), ((0, 1), (2, 5), True), ((1, 2), (0, 5), True), ((0, 1), (0, 2), False)]
    return [make_shard(tmp_path / f"s{k}.h5", ipc, cls, rng, shuffle) for k, (ipc, cls, shuffle) in enumerate(blocks)]


def assert_same_content(a, b) -> None:
    """Every group, dataset (values, dtype, shape, storage) and attribute equal; only the write time may differ."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b)
        for name in ["/", *names_a]:
            oa, ob = fa[name], fb[name]
            assert type(oa) is type(ob), name
            keys = set(oa.attrs) - {"created_utc"}
            assert keys == set(ob.attrs) - {"created_utc"}, name
            for key in keys:
                assert np.array_equal(oa.attrs[key], ob.attrs[key]), (name, key, oa.attrs[key], ob.attrs[key])
            if isinstance(oa, h5py.Dataset):
                for prop in (
                    "shape",
                    "dtype",
                    "chunks",
                    "compression",
                    "compression_opts",
                    "shuffle",
                    "fletcher32",
                    "scaleoffset",
                    "fillvalue",
                    "maxshape",
                ):
                    assert getattr(oa, prop) == getattr(ob, prop), (name, prop)
                assert np.array_equal(oa[()], ob[()]), name


@pytest.fixture(params=["whole-image chunks", "3-row chunks"])
def storage(request, monkeypatch):
    """The default layout (one chunk holds this whole small set) and one whose chunks split the set, last one partial."""
    if request.param == "3-row chunks":
        monkeypatch.setattr(synthetic, "IMAGE_STORAGE", {"compression": "gzip", "chunks": (3, SIZE, SIZE, 3)})
    return request.param


@pytest.mark.parametrize("block_bytes", [1, 5 * 108, 2**26], ids=["one-chunk-row", "5-rows", "default"])
def test_streaming_merge_writes_what_the_in_memory_merge_wrote(shards, tmp_path, storage, block_bytes):
    save_synthetic(tmp_path / "reference.h5", reference_merge(shards))
    merge_synthetic_to(tmp_path / "merged.h5", shards, 4, block_bytes=block_bytes)
    assert_same_content(tmp_path / "reference.h5", tmp_path / "merged.h5")
    m = load_synthetic(tmp_path / "merged.h5")
    assert m.ipc_index.tolist() == np.repeat(np.arange(4), 5).tolist() and m.labels.tolist() == list(range(5)) * 4


def test_streaming_merge_without_expected_ipc_matches_too(shards, tmp_path):
    save_synthetic(tmp_path / "reference.h5", reference_merge(shards[::-1]))
    merge_synthetic_to(tmp_path / "merged.h5", shards[::-1])
    assert_same_content(tmp_path / "reference.h5", tmp_path / "merged.h5")


def _merge_error(merge, *args) -> str:
    with pytest.raises(D3SError) as e:
        merge(*args)
    return str(e.value)


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "gap",
            "merge: no shard holds IPC index 2 of class 'n000' (10 of 20 slots missing; expected 4 images per class)",
        ),
        ("too-few-ipc", "merge: shards hold IPC index 3, expected 3 images per class"),
        ("duplicate", "merge: IPC index 1 of class 'n000' is in more than one shard"),
        ("config", "has a different config than"),
        ("teachers", "has a different teachers than"),
        ("classes", "class"),
        ("none", "merge: no shard files given"),
    ],
)
def test_merge_refuses_shards_that_do_not_form_one_set(shards, tmp_path, case, message):
    def with_odd_shard(**overrides):  # a fifth IPC index from another run
        return shards + [make_shard(tmp_path / "x.h5", (4, 5), (0, 5), np.random.default_rng(1), **overrides)], 5

    paths, ipc = {
        "gap": lambda: (shards[1:], 4),
        "too-few-ipc": lambda: (shards, 3),
        "duplicate": lambda: (shards + [shards[2]], 4),
        "config": lambda: with_odd_shard(config={"iterations": 4}),
        "teachers": lambda: with_odd_shard(teachers=["abc"]),
        "classes": lambda: with_odd_shard(classes=CLASSES[::-1]),
        "none": lambda: ([], 4),
    }[case]()
    out = tmp_path / "merged.h5"
    assert message in _merge_error(lambda p, i: merge_synthetic_to(out, p, i), paths, ipc)
    assert not out.exists() and not list(tmp_path.glob(".merged.h5.tmp-*"))


def test_merge_names_shards_whose_images_differ_in_shape(shards, tmp_path):
    rng = np.random.default_rng(1)
    other = make_shard(tmp_path / "x.h5", (4, 5), (0, 5), rng, images=np.zeros((5, 8, 8, 3), np.uint8))
    message = _merge_error(merge_synthetic_to, tmp_path / "m.h5", shards + [other], 5)
    assert (
        f"merge: {other} holds uint8 images of shape (8, 8, 3), {shards[0]} uint8 images of shape (6, 6, 3)" in message
    )
    assert not (tmp_path / "m.h5").exists()


@pytest.fixture
def image_reads(monkeypatch):
    """Rows of every read of an `images` dataset, one entry a read."""
    reads = []
    original = h5py.Dataset.__getitem__

    def counting(self, key, *args, **kwargs):
        out = original(self, key, *args, **kwargs)
        if self.name == "/images":
            reads.append(out.shape[0])
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    return reads


def test_merge_writes_each_chunk_row_once_and_holds_one_block(shards, tmp_path, monkeypatch, image_reads):
    monkeypatch.setattr(synthetic, "IMAGE_STORAGE", {"compression": "gzip", "chunks": (3, SIZE, SIZE, 3)})
    writes = []
    original = h5py.Dataset.__setitem__

    def recording(self, key, value):
        if self.name == "/images":
            writes.append((key.start, key.stop))
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", recording)
    merge_synthetic_to(tmp_path / "merged.h5", shards, 4, block_bytes=7 * 108)  # 7 rows: 2 chunk rows of 3
    # aligned, whole chunk rows, in order: no compressed chunk is written twice
    assert writes == [(0, 6), (6, 12), (12, 18), (18, 20)]
    assert sum(image_reads) == 20 and max(image_reads) <= 6  # every image read once, one block at most


def test_image_chunks_are_whole_images_of_about_a_megabyte(tmp_path):
    assert synthetic.image_chunks((50_000, 224, 224, 3)) == (6, 224, 224, 3)  # 6 x 147 KB
    assert synthetic.image_chunks((10, 32, 32, 3)) == (10, 32, 32, 3)  # a small set is one chunk
    assert synthetic.image_chunks((5, 1024, 1024, 3)) == (1, 1024, 1024, 3)  # never less than one image
    path = make_shard(tmp_path / "s.h5", (0, 2), (0, 5), np.random.default_rng(0))
    with h5py.File(path) as f:
        assert f["images"].chunks == (10, SIZE, SIZE, 3) and f["images"].compression == "gzip"


def test_read_header_and_read_rows_read_only_what_is_asked(shards, image_reads):
    h = read_header(shards[1])
    assert image_reads == [] and h.image_shape == (3, SIZE, SIZE, 3) and h.image_dtype == np.uint8
    full = load_synthetic(shards[1]).images
    image_reads.clear()
    assert np.array_equal(read_rows(shards[1], np.array([2, 0, 0])), full[[2, 0, 0]])
    assert image_reads == [2]  # rows 0 and 2, once each
    assert read_rows(shards[1], np.array([], dtype=np.int64)).shape == (0, SIZE, SIZE, 3)


def reference_grid(path, max_classes: int, max_ipc: int) -> np.ndarray:
    """plot_images' grid as it was built before (whole set in memory), kept verbatim as the reference."""
    s = load_synthetic(path)
    classes = min(len(s.classes), max_classes)
    ipc = min(s.ipc_range[1], max_ipc)
    h, w, c = s.images.shape[1:]
    grid = np.full((classes * (h + 1), ipc * (w + 1), c), 255, dtype=np.uint8)
    for img, label, i in zip(s.images, s.labels, s.ipc_index):
        if label < classes and i < ipc:
            grid[label * (h + 1) : label * (h + 1) + h, i * (w + 1) : i * (w + 1) + w] = img
    return grid


@pytest.mark.parametrize("max_classes,max_ipc", [(3, 2), (20, 10)])
def test_plot_images_draws_the_same_grid_reading_only_the_drawn_rows(
    tmp_path, monkeypatch, image_reads, max_classes, max_ipc
):
    rng = np.random.default_rng(2)
    path = make_shard(tmp_path / "set.h5", (0, 4), (0, 5), rng, shuffle=True)  # rows out of order: reads must sort
    expected = reference_grid(path, max_classes, max_ipc)
    shown = []
    original = matplotlib.axes.Axes.imshow

    def recording(ax, x, *args, **kwargs):
        shown.append(x)
        return original(ax, x, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", recording)
    image_reads.clear()
    plot_images(path, str(tmp_path / "grid.png"), max_classes, max_ipc)
    assert len(shown) == 1 and np.array_equal(shown[0], expected)
    assert sum(image_reads) == min(5, max_classes) * min(4, max_ipc)  # tiles drawn, nothing else
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_image_grid_of_the_drawn_rows_is_the_grid_of_the_whole_set():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (12, 4, 4, 1), dtype=np.uint8)
    labels, ipc_index = np.tile(np.arange(4), 3), np.repeat(np.arange(3), 4)
    rows = drawn_rows(labels, ipc_index, 2, 2)
    assert rows.tolist() == [0, 1, 4, 5]
    grid = image_grid(images[rows], labels[rows], ipc_index[rows], 2, 2)
    assert np.array_equal(grid, image_grid(images, labels, ipc_index, 2, 2)) and grid.shape == (10, 10, 1)
    assert grid[4, :].tolist() == [[255]] * 10  # the gap between class rows


def test_plot_losses_reads_no_images(shards, tmp_path, image_reads):
    plot_losses(shards, str(tmp_path / "losses.png"))
    assert image_reads == [] and (tmp_path / "losses.png").stat().st_size > 0
