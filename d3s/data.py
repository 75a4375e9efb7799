"""Dataset sources: a dataset spec from config becomes train/test splits of uint8 images.

A spec is a small dict (``source`` plus that source's options, see ``dataset_spec``); adding a
dataset is adding a config entry, never code. Every split yields ``(uint8 tensor [C, S, S], int
label)`` items; normalisation and augmentation happen later on whole batches (see
``transforms``), on the device. Large sources (``hdf5``, ``imagefolder``) are read lazily, so
memory does not grow with the number of images.

The sources (digits, hdf5, torchvision, imagefolder) are registered in ``d3s.sources``, each
naming its loader here (``load_<source>``); ``load_dataset`` dispatches through that registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .dataset_spec import DatasetSpec
from .errors import D3SError
from .runtime import log, to_device
from .sources import get_source
from .transforms import resize_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".JPEG")


class ArrayImageDataset(Dataset):
    """Images held as one uint8 array [N, H, W, C] with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # N,C,H,W view
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


class HDF5ImageDataset(Dataset):
    """Lazily reads `<split>/images` from an HDF5 file, one image at a time.

    The file is opened per process (DataLoader workers fork) with a chunk cache large enough for
    a few compressed chunks, so sequential or block-shuffled reads decompress each chunk once.
    """

    def __init__(self, path: Path, split: str, labels: np.ndarray, chunk_rows: int = 1024, cache_mb: int = 256):
        self.path, self.split, self.labels = path, split, torch.from_numpy(labels.astype(np.int64))
        self.chunk_rows, self.cache_bytes = chunk_rows, cache_mb * 2**20
        self._file = None

    def _images(self):
        import h5py

        if self._file is None:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=self.cache_bytes, rdcc_nslots=10007)
        return self._file[f"{self.split}/images"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self._images()[int(i)]).permute(2, 0, 1), self.labels[i]

    def __getstate__(self):  # an open h5py handle cannot cross into a worker process
        return {**self.__dict__, "_file": None}


def decode_image(path: Path, size: int, channels: int, resize_to: int | None = None) -> torch.Tensor:
    """Decode one image file: shorter side resized to `resize_to` (default `size`), then the centre
    size x size crop, as uint8 [C, S, S]. With resize_to 256 and size 224 this is the ImageNet
    evaluation protocol (torchvision's Resize(256) -> CenterCrop(224), bilinear, antialiased)."""
    from PIL import Image, UnidentifiedImageError

    short = resize_to or size
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            scale = short / min(w, h)
            im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise D3SError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(a.reshape(size, size, channels).copy()).permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """A list of (image file, label), decoded on access (see `decode_image`)."""

    def __init__(self, files: list[Path], labels: list[int], size: int, channels: int, resize_to: int | None = None):
        self.files, self.labels = files, torch.as_tensor(labels, dtype=torch.long)
        self.size, self.channels, self.resize_to = size, channels, resize_to

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return decode_image(self.files[i], self.size, self.channels, self.resize_to), self.labels[i]


class CenterCropDataset(Dataset):
    """Another image dataset's centre size x size crop: a training image stored at eval_resize seen
    as the evaluation protocol sees a test image (statistics, real-image baselines, normalisation)."""

    def __init__(self, base: Dataset, size: int):
        self.base, self.size, self.labels = base, size, base.labels
        self.chunk_rows = getattr(base, "chunk_rows", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        top, left = (x.shape[1] - self.size) // 2, (x.shape[2] - self.size) // 2
        return x[:, top : top + self.size, left : left + self.size], y


class ResizedImageDataset(Dataset):
    """Another image dataset, each image resized (bilinear, antialiased) to `size` when read.

    `image_size` different from an array source's native size is applied here, once, so every
    stage sees the same pixels: a crop view that shrank the image itself would alias, unlike the
    test set's plain resize, and the teacher, its statistics and the students would disagree.
    """

    def __init__(self, base: Dataset, size: int):
        self.base, self.size, self.labels = base, size, base.labels
        self.chunk_rows = getattr(base, "chunk_rows", None)  # read order still follows the base's chunks

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return resize_uint8(x[None], self.size)[0], y


@dataclass
class LoadedDataset:
    """A dataset's splits (None where a stage asked not to load one), class order and image format.

    `native_size` is the side of what a model sees (test images, views); training images may be
    stored larger (`train_size`, the eval_resize side) so random-resized crops keep the whole
    stored image, and `train_plain` is then their centre crop at `native_size`.
    """

    spec: DatasetSpec
    train: Dataset | None
    test: Dataset | None
    classes: list[str]
    channels: int
    native_size: int
    streamed: bool = False  # images are read (and decoded) on access rather than held in memory
    train_size: int | None = None  # side of stored training images; None: native_size
    eval_resize: int | None = None  # test images are Resize(eval_resize) -> CenterCrop(native_size); None: resize only
    val: Dataset | None = None  # held out from the source's training split (val_per_class), seen as test images are
    train_index: np.ndarray | None = None  # with a validation split: the source's index of each training item

    @property
    def train_plain(self) -> Dataset:
        """Training images as the evaluation protocol sees test images: the centre image_size crop."""
        if self.train_size and self.train_size > self.native_size:
            return CenterCropDataset(self.train, self.native_size)
        return self.train

    def loader_workers(self, threads: int) -> int:
        """DataLoader worker processes: only worth their start-up cost when items are read from disk."""
        return max(0, threads - 1) if self.streamed else 0

    @property
    def image_size(self) -> int:
        return self.spec.image_size or self.native_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)


SPLITS = ("train", "test")  # what a source provides; "val" is carved out of "train" (val_per_class)


class SubsetDataset(Dataset):
    """The items of another dataset at `indices` (sorted, so streamed reads stay chunk by chunk)."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels = base.labels[torch.from_numpy(self.indices)]
        self.chunk_rows = getattr(base, "chunk_rows", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[int(self.indices[i])]


def validation_indices(
    labels: np.ndarray, num_classes: int, per_class: int, seed: int, where: str = "dataset"
) -> np.ndarray:
    """Sorted indices of `per_class` training items per class, chosen with `seed`: the validation split.

    Drawn from its own stream (not the random baseline's or the teachers'), so changing the
    split's size changes which images are held out and nothing else's seed.
    """
    rng = np.random.default_rng([seed, 50])
    chosen = []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= per_class:
            raise D3SError(
                f"{where}: class {c} has {len(idx)} training images; val_per_class {per_class} "
                "would leave none to train on"
            )
        chosen.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(chosen))


def load_dataset(spec: DatasetSpec, splits: tuple[str, ...] = SPLITS) -> LoadedDataset:
    """The splits named in `splits`, of "train", "val", "test" (the others are None: evaluation needs
    no training set). With `val_per_class`, "train" is the source's training split less the
    validation images, whichever splits are asked for: no stage trains on them.
    """
    unknown = set(splits) - {*SPLITS, "val"}
    if unknown:
        raise ValueError(f"load_dataset: unknown split(s) {sorted(unknown)}")
    carve = spec.val_per_class > 0 and ("train" in splits or "val" in splits)
    source_splits = tuple(s for s in SPLITS if s in splits or (s == "train" and carve))
    source = get_source(spec.source, f"dataset '{spec.name}'")
    loader = source.resolve_loader()
    data = loader(spec, source_splits) if source.takes_splits else loader(spec)
    data.train, data.test = (getattr(data, s) if s in source_splits else None for s in SPLITS)
    if spec.num_classes is not None and spec.num_classes != data.num_classes:
        raise D3SError(
            f"dataset '{spec.name}': config says num_classes {spec.num_classes}, the data has {data.num_classes}"
        )
    if spec.image_size and spec.image_size != data.native_size:
        if data.train_size and data.train_size != data.native_size:
            raise D3SError(
                f"dataset '{spec.name}': {spec.path} was packed for image_size {data.native_size} "
                f"(training images {data.train_size} px), the config asks for {spec.image_size}; pack it again"
            )
        data.train, data.test = (
            d if d is None else ResizedImageDataset(d, spec.image_size) for d in (data.train, data.test)
        )
        data.native_size = spec.image_size
    if carve:
        val = validation_indices(
            data.train.labels.numpy(), data.num_classes, spec.val_per_class, spec.split_seed, f"dataset '{spec.name}'"
        )
        keep = np.setdiff1d(np.arange(len(data.train)), val)
        data.val = SubsetDataset(data.train_plain, val) if "val" in splits else None
        data.train = SubsetDataset(data.train, keep) if "train" in splits else None
        data.train_index = keep
    return data


def _check_labels(where: str, split: str, labels: np.ndarray, num_classes: int) -> None:
    if len(labels) == 0:
        raise D3SError(f"{where}: the {split} split is empty")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise D3SError(f"{where}: {split} label {int(bad[0])} is outside the class range 0..{num_classes - 1}")


def _from_arrays(spec, train_x, train_y, test_x, test_y, classes, where) -> LoadedDataset:
    for split, y in (("train", train_y), ("test", test_y)):
        _check_labels(where, split, np.asarray(y), len(classes))
    return LoadedDataset(
        spec,
        ArrayImageDataset(train_x, train_y),
        ArrayImageDataset(test_x, test_y),
        list(classes),
        channels=train_x.shape[3],
        native_size=train_x.shape[1],
    )


def load_digits(spec: DatasetSpec) -> LoadedDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), split per class with a seed."""
    pixels, labels = digits_arrays()
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None]  # N,8,8,1
    rng = np.random.default_rng(spec.split_seed)
    test_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test_idx.extend(rng.choice(idx, size=int(round(len(idx) * spec.test_fraction)), replace=False))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.asarray(test_idx, dtype=np.int64)] = True
    classes = [str(c) for c in range(10)]
    return _from_arrays(spec, images[~is_test], labels[~is_test], images[is_test], labels[is_test], classes, "digits")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as sklearn.datasets.load_digits gives them (images [1797, 8, 8] of 0..16, labels), read from
    the file scikit-learn ships, without importing scikit-learn: that import (~1.7 s) was most of a small
    job's start-up, in every job of the embedded default."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise D3SError("dataset source 'digits' needs scikit-learn installed (it ships the digits)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def load_hdf5(spec: DatasetSpec, splits: tuple[str, ...] = SPLITS) -> LoadedDataset:
    """The layout of ../shared/datasets/*.h5 (and of `d3s prepare`'s packed files), read lazily:
    labels and shapes at load time, a split's pixels only when it is asked for.

    Training images may be stored larger than test images (a packed file keeps them at
    eval_resize; the test split is already at the evaluation protocol's size).
    """
    from .artifacts import open_hdf5

    path = Path(spec.path)
    with open_hdf5(path, f"dataset file not found (dataset '{spec.name}', key 'path')") as f:
        for key in ("train/images", "train/labels", "test/images", "test/labels"):
            if key not in f:
                raise D3SError(f"{path}: missing dataset '{key}' (expected train/ and test/ images + labels)")
        if "classes" not in f.attrs:
            raise D3SError(f"{path}: missing attribute 'classes' (class names in label order)")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in f.attrs["classes"]]
        loaded, shapes, streamed = {}, {}, False
        for split in SPLITS:
            images = f[f"{split}/images"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2]:
                raise D3SError(
                    f"{path}: '{split}/images' must be uint8 [N, S, S, C], got {images.dtype} {list(images.shape)}"
                )
            shapes[split] = images.shape
            if split not in splits:
                continue
            labels = f[f"{split}/labels"][()]
            if len(labels) != images.shape[0]:
                raise D3SError(f"{path}: {images.shape[0]} {split} images but {len(labels)} labels")
            _check_labels(str(path), split, labels, len(classes))
            if images.size <= spec.memory_limit_mb * 2**20:
                loaded[split] = ArrayImageDataset(images[()], labels)
            else:
                loaded[split] = HDF5ImageDataset(path, split, labels, chunk_rows=(images.chunks or (1024,))[0])
                streamed = True
        eval_resize = int(f.attrs["eval_resize"]) if f.attrs.get("eval_resize") else None  # packed files say
    train_size, size = shapes["train"][1], shapes["test"][1]
    if shapes["train"][3] != shapes["test"][3]:
        raise D3SError(f"{path}: train images have {shapes['train'][3]} channels, test images {shapes['test'][3]}")
    if train_size < size:
        raise D3SError(f"{path}: train images ({train_size} px) are smaller than test images ({size} px)")
    return LoadedDataset(
        spec,
        loaded.get("train"),
        loaded.get("test"),
        classes,
        channels=shapes["test"][3],
        native_size=size,
        streamed=streamed,
        train_size=train_size,
        eval_resize=eval_resize,
    )


def load_torchvision(spec: DatasetSpec) -> LoadedDataset:
    """CIFAR-10/100, MNIST, Fashion-MNIST in torchvision's on-disk format under `root`."""
    import torchvision

    cls = getattr(torchvision.datasets, spec.torchvision_name)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = cls(root=spec.root, train=train, download=spec.download)
        except RuntimeError as e:  # "Dataset not found or corrupted. You can use download=True ..."
            raise D3SError(
                f"{spec.root}: {spec.torchvision_name} {split} split not found there ({e}); "
                "point 'root' at the folder torchvision downloaded into, or set download: true "
                "where this machine has network"
            ) from None
        data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        if data.ndim == 3:  # MNIST-style [N, H, W] grayscale
            data = data[..., None]
        splits[split] = (data.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64), list(ds.classes))
    (trx, try_, classes), (tex, tey, _) = splits["train"], splits["test"]
    return _from_arrays(spec, trx, try_, tex, tey, classes, f"{spec.root} ({spec.torchvision_name})")


def _image_files(folder: Path) -> list[Path]:
    """Images in a class folder, or in its images/ sub-folder (Tiny-ImageNet's train/<wnid>/images/)."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in IMAGE_SUFFIXES)
    if not found and (folder / "images").is_dir():
        return _image_files(folder / "images")
    return found


def imagefolder_classes(spec: DatasetSpec) -> list[str]:
    """Class (folder) names in label order: the class list file's, or the sorted training folders."""
    train_root = Path(spec.root) / spec.train_dir
    if not train_root.is_dir():
        raise D3SError(f"{train_root}: training folder not found (dataset '{spec.name}', keys 'root'/'train_dir')")
    if spec.class_list:
        if not Path(spec.class_list).is_file():
            raise D3SError(f"{spec.class_list}: class list file not found (dataset '{spec.name}', key 'class_list')")
        classes = [c for c in Path(spec.class_list).read_text().split() if c]
        missing = [c for c in classes if not (train_root / c).is_dir()]
        if missing:
            raise D3SError(f"{spec.class_list}: classes without a folder in {train_root}: {missing[:5]}")
    else:
        classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise D3SError(f"{train_root}: no class folders")
    return classes


def imagefolder_files(spec: DatasetSpec, classes: list[str], split: str) -> tuple[list[Path], list[int]]:
    """The image files of one split of an image folder and their labels (one listing of the folder)."""
    root = Path(spec.root)
    index = {c: i for i, c in enumerate(classes)}
    if split == "test":
        return _validation_files(spec, root / spec.val_dir, index)
    files, labels = [], []
    for c in classes:
        found = _image_files(root / spec.train_dir / c)
        if not found:
            raise D3SError(
                f"{root / spec.train_dir / c}: class folder has no images ({', '.join(IMAGE_SUFFIXES[:5])}, ...)"
            )
        files += found
        labels += [index[c]] * len(found)
    return files, labels


def imagefolder_split(spec: DatasetSpec, split: str, files: list[Path], labels) -> ImageFileDataset:
    """Decoding of a split: test images at the evaluation protocol (Resize(eval_resize) ->
    CenterCrop(image_size)); training images at eval_resize x eval_resize (random-resized crops
    then see the whole stored image), or both at image_size when eval_resize is not set."""
    channels = spec.channels or 3
    if split == "test":
        return ImageFileDataset(files, labels, spec.image_size, channels, spec.eval_resize)
    side = spec.eval_resize or spec.image_size
    return ImageFileDataset(files, labels, side, channels, side)


def load_imagefolder(spec: DatasetSpec, splits: tuple[str, ...] = SPLITS) -> LoadedDataset:
    """Class folders under `root`/train_dir and a validation folder, each image decoded on access."""
    classes = imagefolder_classes(spec)
    loaded = {s: imagefolder_split(spec, s, *imagefolder_files(spec, classes, s)) for s in splits}
    return LoadedDataset(
        spec,
        loaded.get("train"),
        loaded.get("test"),
        classes,
        channels=spec.channels or 3,
        native_size=spec.image_size,
        streamed=True,
        train_size=spec.eval_resize or spec.image_size,
        eval_resize=spec.eval_resize,
    )


def _validation_files(spec: DatasetSpec, val: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
    """Class folders; Tiny-ImageNet's images/ + val_annotations.txt; or a flat folder + label file."""
    if not val.is_dir():
        raise D3SError(f"{val}: validation folder not found (dataset '{spec.name}', keys 'root'/'val_dir')")

    def label_of(name: str, where: str) -> int:
        if name in index:
            return index[name]
        if name.isdigit() and int(name) < len(index):
            return int(name)
        raise D3SError(
            f"{where}: label {name!r} is not a class of the training folder (nor an index below {len(index)})"
        )

    pairs: list[tuple[Path, int]] = []
    if spec.val_labels or (val / "val_annotations.txt").is_file():
        label_file = Path(spec.val_labels) if spec.val_labels else val / "val_annotations.txt"
        image_dir = val / "images" if (val / "images").is_dir() and not spec.val_labels else val
        if not label_file.is_file():
            raise D3SError(f"{label_file}: validation label file not found (key 'val_labels')")
        for n, line in enumerate(label_file.read_text().splitlines(), 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            if len(parts) < 2:
                raise D3SError(f"{label_file}:{n}: expected '<file name> <class>', got {line!r}")
            path = image_dir / parts[0]
            if not path.is_file():
                raise D3SError(f"{label_file}:{n}: image {path} not found")
            pairs.append((path, label_of(parts[1], f"{label_file}:{n}")))
    else:
        dirs = [p for p in val.iterdir() if p.is_dir()]
        if not dirs:
            raise D3SError(f"{val}: no class folders, no val_annotations.txt and no 'val_labels' file given")
        for d in sorted(dirs):
            if d.name not in index:
                raise D3SError(f"{d}: validation class {d.name!r} has no training folder")
            pairs += [(p, index[d.name]) for p in _image_files(d)]
    if not pairs:
        raise D3SError(f"{val}: no validation images")
    return [p for p, _ in pairs], [y for _, y in pairs]


class BlockShuffleSampler(torch.utils.data.Sampler):
    """Shuffles blocks of consecutive items, then items within a window of blocks.

    For streamed HDF5 splits: each compressed chunk is decompressed about once per epoch while the
    order stays random at batch scale. Store streamed datasets shuffled (not sorted by class):
    a window only mixes the classes its blocks contain.
    """

    def __init__(self, n: int, block: int, window_blocks: int, generator: torch.Generator):
        self.n, self.block, self.window, self.generator = n, block, window_blocks, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        starts = torch.arange(0, self.n, self.block)[torch.randperm(-(-self.n // self.block), generator=self.generator)]
        for w in range(0, len(starts), self.window):
            idx = torch.cat(
                [torch.arange(s, min(s + self.block, self.n)) for s in starts[w : w + self.window].tolist()]
            )
            yield from idx[torch.randperm(len(idx), generator=self.generator)].tolist()


def training_sampler(dataset: Dataset, generator: torch.Generator) -> torch.utils.data.Sampler:
    """Random order for in-memory data; block-shuffled order for chunked HDF5 streams."""
    if getattr(dataset, "chunk_rows", None):
        return BlockShuffleSampler(len(dataset), dataset.chunk_rows, 16, generator)
    return torch.utils.data.RandomSampler(dataset, generator=generator)


class RankBatchSampler(torch.utils.data.Sampler):
    """Global batches of `sampler`'s order, of which this rank takes its contiguous share.

    With one process these are exactly DataLoader(batch_size, sampler, drop_last)'s batches;
    with N, the union of the ranks' batches is each global batch, so the run follows the
    1-process one at the same global batch.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool, ranks):
        self.batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last)
        self.ranks = ranks

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.ranks.share(len(batch))]


class ImagesOnDevice:
    """A uint8 image set [N, C, H, W] where the compute is: on the GPU when it takes at most
    `fraction` of the GPU's memory, else on the host, each batch then copied as it is used.

    One plain copy to the GPU (a pinned staging copy would double a set of gigabytes in host
    memory). ImageNet-1K at IPC 50 (7.5 GB) goes to an 80 GB GPU; ImageNet-21K at IPC 20 (66 GB)
    stays on the host. Index with rows on `index_device`.
    """

    def __init__(self, images: torch.Tensor, device: torch.device, fraction: float = 0.25):
        self.device = device
        fits = (
            device.type != "cuda" or images.numel() <= fraction * torch.cuda.get_device_properties(device).total_memory
        )
        self.images = images.to(device) if fits else images
        self.index_device = device if fits else torch.device("cpu")
        if not fits:
            log.info(
                "%.1f GB of images stay on the host (over %.0f%% of the GPU's memory); batches are copied",
                images.numel() / 1e9,
                100 * fraction,
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> torch.Size:
        return self.images.shape

    def take(self, rows) -> torch.Tensor:
        x = self.images[rows]
        return x if x.device == self.device else to_device(x, self.device)


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Global batches in one epoch of `training_loader`: full ones only, or the whole set when smaller."""
    return n // batch_size if n > batch_size else 1


def training_loader(
    dataset: Dataset, batch_size: int, generator: torch.Generator, workers: int, device: torch.device, ranks
) -> torch.utils.data.DataLoader:
    """Shuffled global batches (this rank's share), pinned for asynchronous copies to a GPU."""
    if ranks.world > 1 and min(batch_size, len(dataset)) < ranks.world:
        raise D3SError(
            f"a global batch of {min(batch_size, len(dataset))} images cannot be split over {ranks.world} "
            "processes; use a larger batch_size or fewer processes"
        )
    batches = RankBatchSampler(training_sampler(dataset, generator), batch_size, len(dataset) > batch_size, ranks)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def evaluation_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device, ranks):
    """The dataset in order, every world-th item from this rank's (ranks' counts are summed)."""
    if ranks.world > 1:
        dataset = torch.utils.data.Subset(dataset, range(ranks.rank, len(dataset), ranks.world))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda"
    )


def channel_moments(dataset: Dataset, batch_size: int = 512, workers: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a uint8 image dataset in [0, 1] units, streamed in batches."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    n, s, ss = 0, None, None
    for x, _ in loader:
        x = x.double().div_(255.0)
        s = x.sum((0, 2, 3)) if s is None else s + x.sum((0, 2, 3))
        ss = (x * x).sum((0, 2, 3)) if ss is None else ss + (x * x).sum((0, 2, 3))
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s / n
    std = (ss / n - mean * mean).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()
