"""A student's result: one JSON file per trained and tested student (written by evaluate, read by summary).

Keys: the workflow's `meta` (dataset, variant, ...), `method`, `ipc` (null for the full-data
student), `student`, `seed`, `top1`, `top5` and `val_top1` (fractions; `val_top1` null without a
validation split), `n_val`, `n_images`, `n_test`, `train_seconds`, `protocol` (how the student was
trained and tested, including `label_mode`), `inputs` and `code_version`. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import D3SError
from . import atomic_path, code_version


def student_result(
    *,
    meta: dict | None,
    method: str,
    ipc: int | None,
    student: str,
    seed: int,
    top1: float,
    top5: float,
    val_top1: float | None,
    n_val: int,
    n_images: int,
    n_test: int,
    train_seconds: float,
    protocol: dict[str, Any],
    inputs: dict[str, Any],
) -> dict:
    return {
        **(meta or {}),
        "method": method,
        "ipc": ipc,
        "student": student,
        "seed": seed,
        "top1": top1,
        "top5": top5,
        "val_top1": val_top1,
        "n_val": n_val,
        "n_images": int(n_images),
        "n_test": n_test,
        "train_seconds": round(train_seconds, 2),
        "protocol": protocol,
        "inputs": inputs,
        "code_version": code_version(),
    }


def write_result(path: str | Path, result: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def read_result(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise D3SError(f"{path}: unreadable result file ({e})") from None


def label_mode(result: dict) -> str:
    """'soft' or 'hard'; a result that records no label mode is soft."""
    return result["protocol"].get("label_mode", "soft")
