"""Settings between the config and the commands: schema rendering, defaults dropped, options, per-IPC schedules.

The dataclasses of d3s.hparams (one per stage) and d3s.dataset_spec.DatasetSpec declare every
setting once. From them this module renders the stage sections and `$defs/dataset` of
config/schema/config.schema.yaml (`python -m d3s.settings` rewrites the file; a test checks
the committed file is this rendering), and turns a config section into a command's options.
The Snakemake rules, the benchmarks and the summary all go through here. Torch-free: the
workflow imports it while it plans.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .hparams import SECTIONS

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "config" / "schema" / "config.schema.yaml"
SCHEMA_HEADER = (
    "# JSON Schema (draft 2020-12) for config/config.yaml; snakemake validates against it and fills "
    "defaults.\n# The stage sections and $defs/dataset are rendered from d3s/hparams.py and "
    "d3s/dataset_spec.py by\n# `python -m d3s.settings`: edit those, not these sections.\n"
)
# Where each rendered section goes among the hand-written run-level keys (after the key named).
SECTION_AFTER = {
    "teacher_training": "checkpoint_every",
    "stats": "teacher_training",
    "distill": "stats",
    "relabel": "distill_by_ipc",
    "evaluate": "relabel",
}
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}
BOUND_KEYWORDS = {
    "minimum": "minimum",
    "exclusive_minimum": "exclusiveMinimum",
    "maximum": "maximum",
    "exclusive_maximum": "exclusiveMaximum",
}


def _type_keywords(annotation: Any) -> dict[str, Any]:
    """JSON Schema type keywords of a field annotation: `X | None` is X (None: unset, the key left out);
    `tuple[float, ...]` an array of numbers."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return {"type": "array", "items": {"type": JSON_TYPES[typing.get_args(annotation)[0]]}}
    return {"type": JSON_TYPES[annotation]} if annotation in JSON_TYPES else {}


def field_schemas(cls: type, fields: list[dataclasses.Field]) -> dict[str, dict[str, Any]]:
    """The fields of a settings dataclass as JSON Schema properties."""
    hints = typing.get_type_hints(cls)
    return {f.name: field_schema(f, hints[f.name]) for f in fields}


def field_schema(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """One setting as a JSON Schema property: type, enum, default (None: none), description, bounds, extras."""
    meta = field.metadata
    prop = _type_keywords(annotation)
    if meta.get("choices"):
        prop["enum"] = list(meta["choices"])
    if field.default is not None and field.default is not dataclasses.MISSING:
        prop["default"] = list(field.default) if isinstance(field.default, tuple) else field.default
    prop["description"] = meta["help"]
    prop.update({BOUND_KEYWORDS[k]: v for k, v in meta.get("bounds", {}).items()})
    prop.update(meta.get("schema", {}))
    return prop


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are config keys (not per-job options such as label_mode)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("config", True) and "help" in f.metadata]


def section_schema(cls: type) -> dict[str, Any]:
    """A stage's config section: an object of its settings, each optional with its default."""
    return {
        "type": "object",
        "description": (cls.__doc__ or "").strip(),
        "additionalProperties": False,
        "default": {},
        "properties": field_schemas(cls, config_fields(cls)),
    }


def dataset_schema() -> dict[str, Any]:
    """`$defs/dataset`: a dataset entry's keys from DatasetSpec (a key without a default is required; `name`,
    the entry's key in `datasets`, has no help and is not one)."""
    from .dataset_spec import DatasetSpec

    fields = [f for f in dataclasses.fields(DatasetSpec) if "help" in f.metadata]
    required = [f.name for f in fields if f.default is dataclasses.MISSING]
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": field_schemas(DatasetSpec, fields),
    }


def render_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its stage sections and `$defs/dataset` replaced by the renderings of the dataclasses,
    and the method names of `methods` and `sweep` by the method registry's."""
    from .methods import method_names

    props = {k: v for k, v in schema["properties"].items() if k not in SECTIONS}
    names = list(method_names())
    props["methods"] = {**props["methods"], "items": {**props["methods"]["items"], "enum": names}}
    props["sweep"] = {**props["sweep"], "propertyNames": {"enum": names}}
    for section in SECTIONS:  # insert in order, each after its neighbour
        after = SECTION_AFTER[section]
        items = list(props.items())
        at = next(i for i, (k, _) in enumerate(items) if k == after) + 1
        props = dict(items[:at] + [(section, section_schema(SECTIONS[section]))] + items[at:])
    return {**schema, "properties": props, "$defs": {**schema.get("$defs", {}), "dataset": dataset_schema()}}


def schema_text(schema: dict[str, Any]) -> str:
    """The schema file's text: the header, then YAML in a fixed style (so the rendering is comparable)."""
    return SCHEMA_HEADER + yaml.safe_dump(schema, sort_keys=False, width=110, allow_unicode=True)


def load_schema(path: Path = SCHEMA_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def without_defaults(cls: type, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings whose value differs from the dataclass default (unknown keys are kept, to fail loudly later)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: v for k, v in settings.items() if k not in defaults or not _same(v, defaults[k])}


def _same(value: Any, default: Any) -> bool:
    """Equal as config values: 1 is 1.0, [0.5, 1] is (0.5, 1.0), but True is not 1."""
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and list(value) == list(default)
    return value == default and isinstance(value, bool) == isinstance(default, bool)


def command_options(section: str, settings: Mapping[str, Any]) -> str:
    """A config section as the command's options, defaults left out: {'batch_size': 8} -> '--batch-size 8'.

    The commands have the same defaults (one declaration), so an option the config leaves at its
    default is not written, and a knob an upgrade adds changes no command line (reruns nothing).
    """
    args = []
    for key, value in without_defaults(SECTIONS[section], settings).items():
        name = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{name}" if value else f"--no-{name}")
        else:
            args += [f"--{name}", shlex.quote(str(value))]
    return " ".join(args)


def distill_settings(
    config: Mapping[str, Any], ipc: int | str | None, changes: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The `distill` section as IPC `ipc` runs it: its `distill_by_ipc` entry applied, then `changes`
    (a sweep variant's)."""
    by_ipc = {str(k): v for k, v in (config.get("distill_by_ipc") or {}).items()}
    return {**(config.get("distill") or {}), **(by_ipc.get(str(ipc), {}) if ipc is not None else {}), **(changes or {})}


def main() -> None:
    """Rewrite config/schema/config.schema.yaml from the dataclasses (run after changing a setting)."""
    SCHEMA_FILE.write_text(schema_text(render_schema(load_schema())))
    print(f"wrote {SCHEMA_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
