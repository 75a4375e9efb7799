"""Stage 0 (optional): pack a dataset source once into the HDF5 layout every stage reads.

An ImageNet-sized image folder costs every job a listing of 1.3 M files and every pass a JPEG
decode per image (`evaluate_full` alone: ~38 M decodes per seed). Packing pays both once:

  index   lists the source once: class order, files and labels, and a seeded shuffled order of
          the training images (streamed HDF5 reads are chunk by chunk, so the file must not be
          sorted by class: a chunk would hold one class)
  part    decodes rows [k N / K, (k+1) N / K) of that order (and the same slice of the test
          split) with THREADS parallel decode workers: K such jobs run side by side on a cluster
  merge   appends the parts, one at a time, into one file: memory is one batch, not the set

Pixels are exactly what the raw-folder path decodes (`data.imagefolder_split`): training images
at eval_resize x eval_resize (shorter side resized, centre crop), so random-resized crops keep
the whole stored image, and test images at the evaluation protocol, Resize(eval_resize) ->
CenterCrop(image_size). Other sources (torchvision, digits, hdf5) are packed as they load.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import torch

from .artifacts import atomic_path, open_artifact, read_classes, read_json_attr, write_provenance
from .data import SPLITS, imagefolder_classes, imagefolder_files, imagefolder_split, load_dataset
from .dataset_spec import DatasetSpec
from .errors import D3SError
from .runtime import generator, log, log_every, progress
from .sources import get_source

INDEX_KIND, PART_KIND = "dataset_index", "packed_part"
CHUNK_BYTES = 4 * 2**20  # HDF5 chunk of about 4 MB: 21 images at 256 px, so streamed reads stay random at batch scale


def write_index(spec: DatasetSpec, out: str, seed: int = 0) -> dict[str, int]:
    """List the source once and write the file index (the only job that walks the folder)."""
    t0 = time.perf_counter()
    if get_source(spec.source).decodes_files:
        if not spec.image_size:
            raise D3SError(f"dataset '{spec.name}': an imagefolder source needs 'image_size' to be packed")
        classes = imagefolder_classes(spec)
        listed = {s: imagefolder_files(spec, classes, s) for s in SPLITS}
        root = Path(spec.root)
        files = {s: [str(p.relative_to(root)) for p in listed[s][0]] for s in SPLITS}
        labels = {s: np.asarray(listed[s][1], dtype=np.int64) for s in SPLITS}
    else:
        data = load_dataset(spec)
        classes, files = data.classes, None
        labels = {s: getattr(data, s).labels.numpy().astype(np.int64) for s in SPLITS}
    order = torch.randperm(len(labels["train"]), generator=generator(seed, 60)).numpy()
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(
            f,
            INDEX_KIND,
            config={"dataset": spec.to_dict()},
            seed=seed,
            classes=classes,
            inputs={"root": spec.root, "path": spec.path},
        )
        for s in SPLITS:
            g = f.create_group(s)
            g.create_dataset("labels", data=labels[s])
            if files is not None:
                g.create_dataset("files", data=files[s], dtype=h5py.string_dtype())
        f["train"].create_dataset("order", data=order)
    counts = {s: len(labels[s]) for s in SPLITS}
    log.info(
        "index of '%s': %d classes, %d train / %d test images, listed in %.1f s",
        spec.name,
        len(classes),
        counts["train"],
        counts["test"],
        time.perf_counter() - t0,
    )
    return counts


def part_rows(n: int, part: int, parts: int) -> slice:
    """Rows of part `part` of `parts` (0-based) of n: contiguous, sizes differing by at most one."""
    return slice(part * n // parts, (part + 1) * n // parts)


def _part_dataset(spec: DatasetSpec, index: h5py.File, split: str, rows: np.ndarray, loaded):
    """The part's rows of a split: decoded from the indexed files, or taken from the loaded source."""
    if "files" in index[split]:
        root = Path(spec.root)
        names = index[split]["files"].asstr()[()]
        return imagefolder_split(spec, split, [root / names[i] for i in rows], index[split]["labels"][()][rows])
    return torch.utils.data.Subset(getattr(loaded, split), rows.tolist())


def pack_part(index_path: str, part: int, parts: int, out: str, threads: int = 1, batch_size: int = 64) -> dict:
    """Decode one part of the index (its slice of the shuffled training order and of the test split)."""
    if not 0 <= part < parts:
        raise D3SError(f"pack: part {part} is not in 0..{parts - 1}")
    with open_artifact(index_path, INDEX_KIND) as index:
        spec = DatasetSpec.from_dict(read_json_attr(index, "config")["dataset"], f"{index_path} (config)")
        classes = read_classes(index)
        order = index["train"]["order"][()]
        n_test = len(index["test"]["labels"])
        # a source that is not an image folder is loaded once, for both splits
        loaded = None if "files" in index["train"] else load_dataset(spec)
        sets = {
            "train": _part_dataset(spec, index, "train", order[part_rows(len(order), part, parts)], loaded),
            "test": _part_dataset(spec, index, "test", np.arange(n_test)[part_rows(n_test, part, parts)], loaded),
        }
    empty = [s for s, ds in sets.items() if len(ds) == 0]
    if empty:
        raise D3SError(
            f"pack: part {part} of {parts} has no {empty[0]} images ({len(order)} train, {n_test} test "
            "in the index); use fewer parts"
        )
    # THREADS decode workers: the main process only copies finished batches into the file, so with
    # threads - 1 workers one core of the job's allocation would sit idle (measured: threads 2 with
    # one worker decoded slower than threads 1). threads 1 decodes in the main process.
    workers = (threads if threads > 1 else 0) if get_source(spec.source).decodes_files else 0
    t0, decoded = time.perf_counter(), 0
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        write_provenance(
            f,
            PART_KIND,
            config={"dataset": spec.to_dict(), "part": part, "parts": parts},
            seed=None,
            classes=classes,
            inputs={"index": str(index_path)},
        )
        for split, ds in sets.items():
            g = f.create_group(split)
            g.create_dataset("labels", data=np.asarray([int(y) for y in _labels(ds)], dtype=np.int64))
            images = None
            loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
            every, row = log_every(len(loader), 10), 0
            for step, (x, _) in enumerate(progress(loader, desc=f"pack {split}")):
                x = x.permute(0, 2, 3, 1).numpy()  # [B, S, S, C], the dataset file layout
                if images is None:
                    images = g.create_dataset("images", shape=(len(ds), *x.shape[1:]), dtype=np.uint8)
                images[row : row + len(x)] = x
                row, decoded = row + len(x), decoded + len(x)
                if (step + 1) % every == 0:
                    log.info("pack part %d/%d %s: %d/%d images", part + 1, parts, split, row, len(ds))
    seconds = time.perf_counter() - t0
    log.info(
        "pack part %d/%d: %d images in %.1f s (%.0f images/s with %d decode workers)",
        part + 1,
        parts,
        decoded,
        seconds,
        decoded / max(seconds, 1e-9),
        workers,
    )
    return {"images": decoded, "seconds": seconds, "workers": workers}


def _labels(ds) -> list[int]:
    if isinstance(ds, torch.utils.data.Subset):
        return ds.dataset.labels[ds.indices].tolist()
    return ds.labels.tolist()


def merge_packed(part_paths: list[str], out: str) -> dict[str, int]:
    """Append the parts (in order) into the packed dataset file, one part's batch at a time."""
    if not part_paths:
        raise D3SError("pack merge: no part files given")
    heads = []
    for p in part_paths:
        with open_artifact(p, PART_KIND) as f:
            config = read_json_attr(f, "config")
            heads.append((config, read_classes(f), {s: f[s]["images"].shape for s in SPLITS}))
    config, classes, _ = heads[0]
    parts = config["parts"]
    found = sorted(c["part"] for c, _, _ in heads)
    if found != list(range(parts)):
        raise D3SError(f"pack merge: expected parts 0..{parts - 1} of one index, got parts {found}")
    for p, (c, cl, _shapes) in zip(part_paths, heads):
        if c["dataset"] != config["dataset"] or cl != classes or c["parts"] != parts:
            raise D3SError(f"pack merge: {p} was packed from another dataset spec or index than {part_paths[0]}")
    heads_by_part = sorted(zip(part_paths, heads), key=lambda ph: ph[1][0]["part"])
    spec = config["dataset"]
    counts = {}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        for split in SPLITS:
            shapes = [h[2][split] for _, h in heads_by_part]
            n, item = sum(s[0] for s in shapes), shapes[0][1:]
            if any(s[1:] != item for s in shapes):
                raise D3SError(
                    f"pack merge: parts disagree on the {split} image shape: {sorted({s[1:] for s in shapes})}"
                )
            rows = max(1, min(n, CHUNK_BYTES // int(np.prod(item))))
            images = f.create_dataset(
                f"{split}/images", shape=(n, *item), dtype=np.uint8, chunks=(rows, *item) if n else None
            )
            labels = f.create_dataset(f"{split}/labels", shape=(n,), dtype=np.int64)
            row = 0
            for path, _ in heads_by_part:
                with open_artifact(path, PART_KIND) as part:
                    src = part[split]["images"]
                    for a in range(0, len(src), rows * 16):  # bounded reads: a part can be gigabytes
                        block = src[a : a + rows * 16]
                        images[row + a : row + a + len(block)] = block
                    labels[row : row + len(src)] = part[split]["labels"][()]
                    row += len(src)
            counts[split] = n
        write_provenance(
            f,
            "packed_dataset",
            config={"dataset": spec},
            seed=None,
            classes=classes,
            inputs={"parts": [str(p) for p in part_paths]},
        )
        f.attrs["image_size"] = int(f["test/images"].shape[1])
        if spec.get("eval_resize"):
            f.attrs["eval_resize"] = int(spec["eval_resize"])
    log.info(
        "packed '%s': %d train / %d test images into %s (%.2f GB)",
        spec.get("name"),
        counts["train"],
        counts["test"],
        out,
        Path(out).stat().st_size / 1e9,
    )
    return counts
