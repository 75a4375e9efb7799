"""The images artifact ('images'): uint8 images, labels, IPC indices, loss curves, provenance.

Distillation shards, the merged set and the real-image selections share this format, so every later
stage reads any of them. Torch-free: merging shards and drawing figures import no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np

from ..errors import D3SError
from . import atomic_path, check_same_classes, open_artifact, read_classes, read_json_attr, write_provenance


@dataclass
class SyntheticSet:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]
    ipc_index: np.ndarray  # int64 [N]: which of the IPC slots of its class an image fills
    classes: list[str]
    method: str
    teachers: list[str]  # weights_sha256 of the teachers used
    norm_mean: list[float]
    norm_std: list[float]
    hflip: bool
    config: dict
    seed: int
    loss_curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # block -> name -> per-iteration
    inputs: dict = field(default_factory=dict)

    @property
    def ipc_range(self) -> tuple[int, int]:
        return int(self.ipc_index.min()), int(self.ipc_index.max()) + 1


# How an images dataset is stored; shared by save and merge so a merged set is laid out as a saved one.
# Chunks are whole images (see image_chunks) unless "chunks" is given here.
IMAGE_STORAGE = {"compression": "gzip"}
# About this many bytes of whole images a chunk: reading one image decompresses at most this (h5py's
# automatic chunks split H, W and C and grow with N: at ImageNet-21K IPC 20 one image touched a 1.9 GB
# chunk row), and a merge's block is not forced above MERGE_BLOCK_BYTES.
IMAGE_CHUNK_BYTES = 2**20
# Bytes of merged images a merge assembles per write (at least one chunk row, see _block_rows): its memory
# is bounded by this, not by the shard or set size.
MERGE_BLOCK_BYTES = 64 * 2**20


@dataclass
class SyntheticHeader:
    """Everything an images artifact holds but its pixels: cheap to read at any scale (labels are 8 B an image)."""

    image_shape: tuple[int, ...]  # [N, H, W, C]
    image_dtype: np.dtype
    labels: np.ndarray
    ipc_index: np.ndarray
    classes: list[str]
    method: str
    teachers: list[str]
    norm_mean: list[float]
    norm_std: list[float]
    hflip: bool
    config: dict
    seed: int
    loss_curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)

    @property
    def ipc_range(self) -> tuple[int, int]:
        return int(self.ipc_index.min()), int(self.ipc_index.max()) + 1


def image_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """HDF5 chunk shape for images [N, H, W, C]: whole images, about IMAGE_CHUNK_BYTES (uint8) a chunk."""
    n, *item = shape
    rows = max(1, min(n, IMAGE_CHUNK_BYTES // max(1, int(np.prod(item)))))
    return (rows, *item)


def image_storage(shape: tuple[int, ...]) -> dict:
    """create_dataset options for an images dataset of this shape."""
    return {"chunks": image_chunks(shape), **IMAGE_STORAGE}


_SET_FIELDS = [f.name for f in fields(SyntheticSet) if f.name != "images"]


def _write_metadata(f: h5py.File, s: SyntheticSet | SyntheticHeader, image_shape: tuple[int, ...]) -> None:
    """Provenance, attributes, labels, IPC indices and loss curves: all of an images artifact but its images."""
    write_provenance(f, "images", config=s.config, seed=s.seed, classes=s.classes, inputs=s.inputs)
    start, end = s.ipc_range
    f.attrs.update(
        method=s.method,
        teachers=json.dumps(s.teachers),
        norm_mean=s.norm_mean,
        norm_std=s.norm_std,
        hflip=s.hflip,
        ipc_start=start,
        ipc_end=end,
        ipc=end - start,
        image_size=image_shape[1],
        channels=image_shape[3],
    )
    f.create_dataset("labels", data=s.labels)
    f.create_dataset("ipc_index", data=s.ipc_index)
    for block, curves in s.loss_curves.items():
        for name, values in curves.items():
            f.create_dataset(f"loss_curves/{block}/{name}", data=np.asarray(values, dtype=np.float32))


def save_synthetic(path: str | Path, s: SyntheticSet) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_metadata(f, s, s.images.shape)
        f.create_dataset("images", data=s.images, **image_storage(s.images.shape))


def _read_loss_curves(f: h5py.File) -> dict[str, dict[str, np.ndarray]]:
    if "loss_curves" not in f:
        return {}
    return {b: {n: f["loss_curves"][b][n][()] for n in f["loss_curves"][b]} for b in f["loss_curves"]}


def _read_header(f: h5py.File) -> SyntheticHeader:
    images = f["images"]
    return SyntheticHeader(
        image_shape=tuple(images.shape),
        image_dtype=images.dtype,
        labels=f["labels"][()].astype(np.int64),
        ipc_index=f["ipc_index"][()].astype(np.int64),
        classes=read_classes(f),
        method=str(f.attrs["method"]),
        teachers=json.loads(f.attrs["teachers"]),
        norm_mean=[float(v) for v in f.attrs["norm_mean"]],
        norm_std=[float(v) for v in f.attrs["norm_std"]],
        hflip=bool(f.attrs["hflip"]),
        config=read_json_attr(f, "config"),
        seed=int(f.attrs["seed"]),
        loss_curves=_read_loss_curves(f),
        inputs=read_json_attr(f, "inputs"),
    )


def read_header(path: str | Path) -> SyntheticHeader:
    """An images artifact without its images."""
    with open_artifact(path, "images") as f:
        return _read_header(f)


def load_synthetic(path: str | Path) -> SyntheticSet:
    with open_artifact(path, "images") as f:
        header = _read_header(f)
        return SyntheticSet(images=f["images"][()], **{k: getattr(header, k) for k in _SET_FIELDS})


def _read_dataset_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """ds[rows] for rows in any order (repeats allowed), read from disk in increasing order as h5py needs."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.empty((0, *ds.shape[1:]), dtype=ds.dtype)
    unique, where = np.unique(rows, return_inverse=True)
    if unique[-1] - unique[0] + 1 == len(unique):  # one contiguous slice: a plain hyperslab read, no point list
        block = ds[int(unique[0]) : int(unique[-1]) + 1]
    else:
        block = ds[unique]
    return block if np.array_equal(unique, rows) else block[where]


def read_rows(path: str | Path, rows: np.ndarray) -> np.ndarray:
    """Images at `rows` of an images artifact (in that order), reading only those rows."""
    with open_artifact(path, "images") as f:
        return _read_dataset_rows(f["images"], rows)


def load_loss_curves(path: str | Path) -> tuple[str, int, dict[str, dict[str, np.ndarray]]]:
    """Method, IPC and loss curves of an images artifact, without reading its images."""
    with open_artifact(path, "images") as f:
        return str(f.attrs["method"]), int(f.attrs["ipc"]), _read_loss_curves(f)


def _plan_merge(
    paths: list[str], shards: list[SyntheticHeader], expected_ipc: int | None
) -> tuple[SyntheticHeader, np.ndarray]:
    """Check the shards form one set; return the merged header and `order` (the concatenated shards' row of
    each merged row)."""
    first = shards[0]
    for p, s in zip(paths, shards):
        if not len(s.labels) == len(s.ipc_index) == s.image_shape[0]:
            raise D3SError(
                f"merge: {p} holds {s.image_shape[0]} images but {len(s.labels)} labels and "
                f"{len(s.ipc_index)} IPC indices"
            )
    for p, s in zip(paths[1:], shards[1:]):
        check_same_classes(first.classes, paths[0], s.classes, p)
        for key in ("method", "teachers", "norm_mean", "norm_std", "config", "seed"):
            if getattr(s, key) != getattr(first, key):
                raise D3SError(
                    f"merge: {p} has a different {key} than {paths[0]}; shards of one set must come from one run"
                )
        if s.image_shape[1:] != first.image_shape[1:] or s.image_dtype != first.image_dtype:
            raise D3SError(
                f"merge: {p} holds {s.image_dtype} images of shape {s.image_shape[1:]}, {paths[0]} "
                f"{first.image_dtype} images of shape {first.image_shape[1:]}"
            )
    ipc_index = np.concatenate([s.ipc_index for s in shards])
    labels = np.concatenate([s.labels for s in shards])
    ipc = expected_ipc if expected_ipc is not None else int(ipc_index.max()) + 1
    slots = ipc_index * len(first.classes) + labels
    counts = np.bincount(slots, minlength=ipc * len(first.classes))
    if len(counts) > ipc * len(first.classes):
        raise D3SError(f"merge: shards hold IPC index {int(ipc_index.max())}, expected {ipc} images per class")
    if (counts > 1).any():
        i, c = divmod(int(np.flatnonzero(counts > 1)[0]), len(first.classes))
        raise D3SError(f"merge: IPC index {i} of class {first.classes[c]!r} is in more than one shard")
    if (counts == 0).any():
        i, c = divmod(int(np.flatnonzero(counts == 0)[0]), len(first.classes))
        raise D3SError(
            f"merge: no shard holds IPC index {i} of class {first.classes[c]!r} "
            f"({int((counts == 0).sum())} of {len(counts)} slots missing; expected {ipc} images per class)"
        )
    order = np.argsort(slots, kind="stable")
    curves = {b: c for s in shards for b, c in s.loss_curves.items()}
    inputs = {k: v for k, v in first.inputs.items() if k != "shard"}
    merged = SyntheticHeader(
        image_shape=(len(order), *first.image_shape[1:]),
        image_dtype=first.image_dtype,
        labels=labels[order],
        ipc_index=ipc_index[order],
        classes=first.classes,
        method=first.method,
        teachers=first.teachers,
        norm_mean=first.norm_mean,
        norm_std=first.norm_std,
        hflip=first.hflip,
        config=first.config,
        seed=first.seed,
        loss_curves=dict(sorted(curves.items())),
        inputs={"shards": [str(p) for p in paths], **inputs},
    )
    return merged, order


def _block_rows(out: h5py.Dataset, block_bytes: int) -> int:
    """Rows of `out` to assemble per write: a multiple of its chunk rows, about `block_bytes` (at least one chunk row).

    Writing whole chunk rows at aligned offsets writes each compressed chunk exactly once; a partly
    written chunk would be read back, decompressed and rewritten later, slower and leaving dead space.
    With whole-image chunks of about IMAGE_CHUNK_BYTES (image_chunks) the block is block_bytes rounded down.
    """
    chunk_rows = out.chunks[0] if out.chunks else 1
    row_bytes = int(np.prod(out.shape[1:])) * out.dtype.itemsize
    return chunk_rows * max(1, block_bytes // max(1, chunk_rows * row_bytes))


def _fill_block(out: h5py.Dataset, start: int, sources: np.ndarray, paths: list[str], offsets: np.ndarray) -> None:
    """Write rows start.. of `out` from rows `sources` of the shards concatenated (shard k from offsets[k])."""
    block = np.empty((len(sources), *out.shape[1:]), dtype=out.dtype)
    shard_of = np.searchsorted(offsets, sources, side="right") - 1
    for k in np.unique(shard_of).tolist():
        at = np.flatnonzero(shard_of == k)
        with open_artifact(paths[k], "images") as f:
            block[at] = _read_dataset_rows(f["images"], sources[at] - offsets[k])
    out[start : start + len(block)] = block


def merge_synthetic_to(
    out: str | Path, paths: list[str], expected_ipc: int | None = None, block_bytes: int = MERGE_BLOCK_BYTES
) -> None:
    """Join shards (blocks of IPC indices x classes of one run) into one set at `out`, ordered by (IPC index, class).

    Every (IPC index, class) slot must be filled exactly once. Only the shards' labels, IPC indices,
    attributes and loss curves are held at once; the merged images are assembled in order, one block
    of rows (see _block_rows) at a time from whichever shards hold them, so memory does not grow with
    the set (an ImageNet-21K set is ~66 GB). Checks run before `out` is opened and the file is written
    under a temporary name, so a failed merge leaves nothing behind.
    """
    if not paths:
        raise D3SError("merge: no shard files given")
    shards = [read_header(p) for p in paths]
    merged, order = _plan_merge(paths, shards, expected_ipc)
    offsets = np.cumsum([0, *(s.image_shape[0] for s in shards)])
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        _write_metadata(f, merged, merged.image_shape)
        images = f.create_dataset(
            "images", shape=merged.image_shape, dtype=merged.image_dtype, **image_storage(merged.image_shape)
        )
        step = _block_rows(images, block_bytes)
        for start in range(0, len(order), step):
            _fill_block(images, start, order[start : start + step], paths, offsets)
