"""Render config/README.md from config.schema.yaml (run after changing a setting).

    python -m d3s.settings                       # first: the schema from d3s/hparams.py, d3s/dataset_spec.py
    python config/schema/make_readme.py          # then: config/README.md from the schema
Tests check the committed schema and README equal what these render.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from d3s.hparams import SECTIONS

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"

# Which points are the paper's, ours, or the peers' (see ../shared/docs/method.md).
NOTES = {
    (
        "stats",
        "pooling",
    ): "per-position full covariance: **[choice]** (the paper models BN-layer features as Gaussians with full "
    "covariance **[paper]**)",
    (
        "distill",
        "ridge",
    ): "**[choice]**, relative to the layer's mean real variance; added to both sides (the first BN layer's real "
    "covariance is singular)",
    ("distill", "kl_weight"): "per-layer KL normalised by its dimension D_l: **[choice]**",
    ("distill", "ema_momentum"): "moving statistics of the whole synthetic set **[paper]**; momentum **[choice]**",
    ("distill", "init"): "noise **[peer: SRe2L]**; real images as an option **[choice]**",
    ("distill", "lr"): "Adam on pixels, betas (0.5, 0.9), cosine **[peer: SRe2L]**",
    ("distill", "teacher_mode"): "average over K teachers or one per step **[paper]**",
    ("distill", "r_bn"): "SRe2L's r_bn **[peer]**",
    ("relabel", "top_k"): "FKD's label compression **[peer]**; dense by default",
    ("relabel", "epochs"): "FKD-style per-epoch views **[peer]**; the paper uses teacher soft labels **[paper]**",
    ("evaluate", "temperature"): "KL at temperature T without T^2 **[peer]**; the protocol is recorded in every result",
}
RUN_KEYS = [
    "dataset",
    "methods",
    "ipcs",
    "ipc_per_shard",
    "classes_per_shard",
    "students",
    "eval_seeds",
    "seeds_in_one_job",
    "seed",
    "device",
    "local_merge",
    "distill_by_ipc",
]


def _fmt(value) -> str:
    return "" if value is None else "`" + json.dumps(value) + "`"


def _row(key: str, prop: dict, note: str | None = None) -> str:
    text = prop.get("description", "")
    if note:
        text += f" — {note}"
    if "enum" in prop and key != "source":
        text += f" (one of {', '.join(map(str, prop['enum']))})"
    return f"| `{key}` | {_fmt(prop.get('default'))} | {text} |"


def render(schema: dict) -> str:
    props = schema["properties"]
    table = ["| key | default | description |", "|---|---|---|"]
    out = [
        "# Configuration keys",
        "",
        "`config/config.yaml` is validated against [`schema/config.schema.yaml`](schema/config.schema.yaml) "
        "(JSON Schema draft 2020-12) before any job runs; missing keys take the defaults below. "
        "Marks: **[paper]** stated by the D3S paper, **[choice]** ours where the paper is silent, **[peer]** "
        "what SRe2L/CDA/G-VBSM do. Resources and threads are not config: they belong in profiles. "
        "Starting points per dataset are in [`presets/`](presets/). This page is rendered by "
        "`schema/make_readme.py`.",
        "",
        "## Run-level keys",
        "",
        *table,
    ]
    out += [_row(k, props[k]) for k in RUN_KEYS]
    out += [_row(f"teachers.{k}", v) for k, v in props["teachers"]["properties"].items()]
    out += [
        _row(f"teachers.pretrained[].{k}", v)
        for k, v in props["teachers"]["properties"]["pretrained"]["items"]["properties"].items()
    ]
    out += [_row(f"checkpoint_every.{k}", v) for k, v in props["checkpoint_every"]["properties"].items()]
    out += [
        "",
        "## `datasets.<name>`",
        "",
        "One entry per dataset; `dataset:` picks the one to run. Adding a dataset is adding an entry.",
        "",
        *table,
    ]
    out += [_row(k, v) for k, v in schema["$defs"]["dataset"]["properties"].items()]
    for section in SECTIONS:
        out += [
            "",
            f"## `{section}`",
            "",
            props[section]["description"]
            + " Each key is also the command's option of the same name (`_` becomes `-`).",
            "",
            *table,
        ]
        out += [_row(k, v, NOTES.get((section, k))) for k, v in props[section]["properties"].items()]
    return "\n".join(out) + "\n"


def main() -> None:
    schema = yaml.safe_load((HERE / "config.schema.yaml").read_text())
    README.write_text(render(schema))
    print(f"wrote {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
