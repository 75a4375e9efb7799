"""Self-describing HDF5 artifacts: atomic writes, provenance attributes and checked reads.

Every artifact's root carries `d3s_kind`, `format_version`, `code_version`, `created_utc`,
`config` (JSON), `seed`, `classes` (the class order) and `inputs` (JSON: what it was made from),
so a file found on disk says what it is without the workflow that made it.

This package holds each artifact type's format: its record, reader and writer, one module a type,
so a stage imports the formats it reads, never the stage that wrote them.

  teacher   d3s_kind 'teacher': a trained or imported network's weights and input format
  stats     d3s_kind 'stats': per-layer Gaussian moments of a teacher's BatchNorm inputs
  images    d3s_kind 'images': distilled or selected images (shards and merged sets)
  labels    d3s_kind 'labels': soft labels per (label epoch, image)
  result    a student's result JSON (evaluate writes it, summary reads it)

The helpers below are shared by all of them (and by the dataset-info and prepared-dataset files).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py

from .. import __version__
from ..errors import D3SError

FORMAT_VERSION = 1


@functools.cache
def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one (``+dirty`` if edited)."""
    src = Path(__file__).resolve().parents[1]  # the d3s package
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    A killed or failed job therefore never leaves a file under the final name.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_provenance(
    f: h5py.File,
    kind: str,
    *,
    config: dict[str, Any],
    seed: int | None,
    classes: Sequence[str],
    inputs: dict[str, Any] | None = None,
) -> None:
    """Stamp an open HDF5 file with what it is and where it came from."""
    f.attrs["d3s_kind"] = kind
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["code_version"] = code_version()
    f.attrs["created_utc"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.attrs["seed"] = -1 if seed is None else int(seed)
    f.attrs["classes"] = [str(c) for c in classes]
    f.attrs["inputs"] = json.dumps(inputs or {}, sort_keys=True)


def open_hdf5(path: str | os.PathLike, missing: str, **kwargs) -> h5py.File:
    """Open an HDF5 file for reading; a missing or unreadable file is a D3SError naming it."""
    path = Path(path)
    if not path.is_file():
        raise D3SError(f"{path}: {missing}")
    try:
        return h5py.File(path, "r", **kwargs)
    except OSError as e:
        raise D3SError(f"{path}: not a readable HDF5 file ({e})") from None


def open_artifact(path: str | os.PathLike, kind: str) -> h5py.File:
    """Open an artifact for reading and check it is the expected kind of d3s file."""
    f = open_hdf5(path, f"file not found (expected a d3s {kind} artifact)")
    found = f.attrs.get("d3s_kind")
    if found != kind:
        f.close()
        raise D3SError(f"{path}: expected a d3s '{kind}' artifact, found d3s_kind={found!r}")
    if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
        f.close()
        raise D3SError(f"{path}: artifact format {f.attrs.get('format_version')!r}, this d3s reads {FORMAT_VERSION}")
    return f


def read_classes(f: h5py.File) -> list[str]:
    return [c.decode() if isinstance(c, bytes) else str(c) for c in f.attrs["classes"]]


def read_json_attr(f: h5py.File, name: str) -> Any:
    return json.loads(f.attrs[name])


def check_same_classes(expected: Sequence[str], expected_src: str, found: Sequence[str], found_src: str) -> None:
    """Class order must agree between every stage: a silent mismatch costs tens of accuracy points."""
    expected, found = list(expected), list(found)
    if expected == found:
        return
    if sorted(expected) == sorted(found):
        what = "the same classes in a different order"
    else:
        what = f"different classes ({len(expected)} vs {len(found)})"
    first = next((i for i, (a, b) in enumerate(zip(expected, found)) if a != b), min(len(expected), len(found)))
    raise D3SError(
        f"class order mismatch: {found_src} has {what} than {expected_src}; first difference at "
        f"index {first}: {expected[first : first + 3]} vs {found[first : first + 3]}"
    )
