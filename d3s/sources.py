"""The registry of dataset sources: what each reads, which keys it needs, and which function loads it.

Modelled on timm's model registry: one record per source, registered by name, looked up by
name. The spec parser (`DatasetSpec.from_dict`), the config schema's `source` entry, the loader
dispatch (`data.load_dataset`) and packing (`prepare`) all read it, so adding a source is one
`register_source` call below plus its loader function.

Torch-free: a loader is named by its import path and imported on first use, so the CLI and the
workflow can parse and validate specs without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from .errors import D3SError


@dataclass(frozen=True)
class Source:
    """One dataset source."""

    name: str
    description: str  # one line: the source's part of the config schema's `source` description
    loader: str  # "module:function", called as function(spec) or function(spec, splits) -> data.LoadedDataset
    needs: tuple[str, ...] = ()  # spec keys the source cannot do without
    takes_splits: bool = False  # the loader reads only the splits asked for (else it always reads train and test)
    packable: bool = False  # `pack: true` may pack it into one HDF5 file (see `prepare`)
    # images are files decoded on read, listed by data.imagefolder_files: eval_resize applies to them, and
    # packing indexes the files once and decodes them with parallel workers
    decodes_files: bool = False

    def resolve_loader(self) -> Callable:
        """The loader function (imports its module: torch, for the built-in sources)."""
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(module), function)


_SOURCES: dict[str, Source] = {}


def register_source(name: str, description: str, loader: str, **options) -> Source:
    """Add a source (options: the other fields of `Source`). Names are unique."""
    if name in _SOURCES:
        raise ValueError(f"dataset source {name!r} is already registered")
    source = Source(name, description, loader, **options)
    _SOURCES[name] = source
    return source


def source_names() -> tuple[str, ...]:
    """The registered sources, in registration order (the schema's enum order)."""
    return tuple(_SOURCES)


def get_source(name: str, where: str = "dataset spec") -> Source:
    """The source called `name`; an unknown name is a D3SError that lists the known ones."""
    try:
        return _SOURCES[name]
    except (KeyError, TypeError):  # TypeError: an unhashable value from YAML, say a list
        raise D3SError(f"{where}: source {name!r} is not one of {', '.join(source_names())}") from None


def sources_description() -> str:
    """The config schema's description of `source`: each source's line."""
    return "; ".join(f"{s.name}: {s.description}" for s in _SOURCES.values()) + "."


register_source("digits", "scikit-learn's bundled 8x8 digits", "d3s.data:load_digits")
register_source(
    "hdf5",
    "a file with train/images, train/labels, test/..., attribute classes",
    "d3s.data:load_hdf5",
    needs=("path",),
    takes_splits=True,
)
register_source(
    "torchvision",
    "CIFAR10/CIFAR100/MNIST/FashionMNIST folders under root",
    "d3s.data:load_torchvision",
    needs=("root", "torchvision_name"),
    packable=True,
)
register_source(
    "imagefolder",
    "root/train/<class>/ images and a validation folder",
    "d3s.data:load_imagefolder",
    needs=("root", "image_size"),
    takes_splits=True,
    packable=True,
    decodes_files=True,
)
