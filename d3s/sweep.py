"""Sweeps: grids of stage settings per method and IPC, each variant a set of jobs, chosen on validation.

A variant is the settings it changes from the configured ones, per stage section. Its name per
section is what the workflow puts in paths ("default", or "lr=0.1,iterations=250"), so two
variants that share their distillation settings share one distilled set, and a variant equal to
the configured settings is the run without a sweep. Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .methods import get_method, method_names, synthesising_methods

DEFAULT = "default"
SYNTHESISING = synthesising_methods()
# the stage sections a method's sweep may vary (a real-image selection has no distillation)
SECTIONS = {m: get_method(m).sections for m in method_names()}


def format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def part_name(overrides: dict[str, Any]) -> str:
    """A section's changes as a path segment: 'default', or 'key=value,...' in key order."""
    if not overrides:
        return DEFAULT
    return ",".join(f"{k}={format_value(overrides[k])}" for k in sorted(overrides))


def parse_part(name: str, where: str = "variant") -> dict[str, Any]:
    """The inverse of part_name."""
    if name == DEFAULT:
        return {}
    out = {}
    for item in name.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{where}: {name!r} is not 'default' nor 'key=value,...'")
        out[key] = parse_value(value)
    return out


def method_grid(sweep: dict, method: str, ipc: int | None) -> dict[tuple[str, str], list]:
    """(section, key) -> values of a method's grid at an IPC: its own entries, then its by_ipc ones."""
    entry = sweep.get(method) or {}
    grid = {}
    layers = [entry] + ([(entry.get("by_ipc") or {}).get(str(ipc)) or {}] if ipc is not None else [])
    for layer in layers:
        for section, keys in layer.items():
            if section == "by_ipc":
                continue
            for key, values in keys.items():
                grid[(section, key)] = list(values)
    return grid


def variants(sweep: dict, method: str, ipc: int | None, base: dict[str, dict]) -> list[dict[str, dict]]:
    """Every grid point as {section: changed settings}, in grid order, without repeats.

    `base` holds each section's configured settings (for distill, with the IPC's distill_by_ipc
    entry applied); a grid value equal to it is no change, so it names no new variant.
    """
    grid = method_grid(sweep, method, ipc)
    keys = sorted(grid)
    found: list[dict[str, dict]] = []
    for point in itertools.product(*(grid[k] for k in keys)):
        changes: dict[str, dict] = {s: {} for s in SECTIONS[method]}
        for (section, key), value in zip(keys, point):
            if base.get(section, {}).get(key) != value:
                changes[section][key] = value
        if changes not in found:
            found.append(changes)
    return found or [{s: {} for s in SECTIONS[method]}]


def check_sweep(sweep: dict, methods: list[str], ipcs: list[int]) -> None:
    """A sweep names sections its methods have, and gives every method the same budget of variants."""
    for method, entry in sweep.items():
        if method not in SECTIONS:
            raise ValueError(f"config: sweep.{method}: not a method ({', '.join(SECTIONS)})")
        if method not in methods:
            raise ValueError(f"config: sweep.{method}: the method is not in `methods` ({', '.join(methods)})")
        if not get_method(method).per_ipc and entry.get("by_ipc"):
            raise ValueError("config: sweep.full.by_ipc: the full-data student has no IPC")
        layers = [(f"sweep.{method}", entry)] + [
            (f"sweep.{method}.by_ipc.{i}", e) for i, e in (entry.get("by_ipc") or {}).items()
        ]
        for where, layer in layers:
            for section, keys in layer.items():
                if section == "by_ipc":
                    continue
                if section not in SECTIONS[method]:
                    raise ValueError(
                        f"config: {where}.{section}: {method} has no '{section}' settings to sweep "
                        f"(it sweeps {', '.join(SECTIONS[method])})"
                    )
                for key, values in keys.items():
                    if not isinstance(values, list) or not values:
                        raise ValueError(f"config: {where}.{section}.{key}: expected a non-empty list of values")
        for ipc in entry.get("by_ipc") or {}:
            if int(ipc) not in ipcs:
                raise ValueError(f"config: sweep.{method}.by_ipc.{ipc}: IPC {ipc} is not in `ipcs` {ipcs}")


def budget(sweep: dict, method: str, ipc: int, labels: str = "soft") -> int:
    """Grid points of a method at an IPC: the number of variants it is granted. A hard-label
    student reads no soft labels, so for it variants that differ only in `relabel` are one."""
    count = 1
    for (section, _), values in method_grid(sweep, method, ipc).items():
        if labels == "soft" or section != "relabel":
            count *= len(values)
    return count


def check_budgets(sweep: dict, methods: list[str], ipcs: list[int], labels: tuple[str, ...] = ("soft",)) -> None:
    """Every method distilling or selecting at an IPC gets the same number of variants there, per label mode."""
    per_ipc = [m for m in methods if get_method(m).per_ipc]
    for ipc in ipcs:
        for mode in labels:
            counts = {m: budget(sweep, m, ipc, mode) for m in per_ipc}
            if len(set(counts.values())) > 1:
                listed = ", ".join(f"{m} {n}" for m, n in counts.items())
                raise ValueError(
                    f"config: sweep: at IPC {ipc} the methods have different budgets ({listed} variants"
                    f"{' for hard-label students, which ignore relabel settings' if mode == 'hard' else ''}); "
                    "give every method a grid of the same size, so none is tuned more than another"
                )
