"""Summary: per (method, IPC, label mode, student), the validation-chosen variant's test accuracy,
with DD-Ranking's metrics; and a sweep table of every variant.

Selection: per (method, IPC, label mode), the sweep variant with the best mean validation top-1
of the selecting student (the first configured one) is chosen, for every student; test accuracy
never takes part. Soft labels choose the distilled set; the hard-label row keeps that set and
chooses only among its student settings, so a method's HLR and LRS describe one set. Metrics (DD-Ranking,
Li et al. 2025), in percentage points:
  IOR = acc(method) - acc(random), same IPC, student and label mode (DD-Ranking's LRS uses soft)
  HLR = acc(full, hard labels) - acc(method, hard labels)                (lower is better)
  LRS = 100 (e^a - e^-1) / (e - e^-1),  a = (IOR_soft - HLR) / 2 / 100   (accuracies as fractions,
        so LRS lies in [0, 100] as its paper defines it; DD-Ranking's code feeds percentages)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from .artifacts import atomic_path
from .artifacts.result import label_mode, read_result
from .artifacts.teacher import read_teacher_header
from .errors import D3SError
from .hparams import RelabelParams
from .methods import method_names
from .settings import without_defaults

LABEL_ORDER = ["soft", "hard"]
COLUMNS = [
    "dataset",
    "method",
    "ipc",
    "labels",
    "student",
    "seeds",
    "top1_mean",
    "top1_std",
    "top5_mean",
    "top5_std",
    "val_top1_mean",
    "val_top1_std",
    "ior",
    "ior_sigmas",
    "hlr",
    "lrs",
    "variant",
    "variants",
    "synthesis_image_steps",
    "label_epochs",
    "teacher_top1",
    "protocol",
]
SWEEP_COLUMNS = [
    "dataset",
    "method",
    "ipc",
    "labels",
    "student",
    "variant",
    "seeds",
    "val_top1_mean",
    "val_top1_std",
    "top1_mean",
    "top1_std",
    "selected",
]
LRS_WEIGHT = 0.5  # DD-Ranking's default lambda between IOR and HLR


def protocol_hash(result: dict) -> str:
    """Short hash of how the student was trained and tested: rows with equal hashes are comparable."""
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "temperature",
        "t2_scale",
        "label_mode",
        "optimizer",
        "schedule",
        "reported",
        "label_epochs",
        "relabel",
        "crop_scale_min",
        "crop_scale_max",
    )
    protocol = {k: result["protocol"].get(k) for k in keys}
    if result["protocol"].get("eval_resize"):  # test-time Resize -> CenterCrop; absent: plain resize (older results)
        protocol["eval_resize"] = result["protocol"]["eval_resize"]
    if protocol["relabel"]:
        # a setting at its default is what a result made before the setting existed did too
        protocol["relabel"] = without_defaults(RelabelParams, protocol["relabel"])
    blob = json.dumps(protocol, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def label_robust_score(ior: float, hlr: float, weight: float = LRS_WEIGHT) -> float:
    """DD-Ranking's LRS from IOR and HLR in percentage points, on [0, 100]."""
    a = (weight * ior - (1 - weight) * hlr) / 100
    return 100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def distilled_set(variant: str) -> str:
    """The distill part of a variant name ('{dv}/{rv or hard}/{ev}'): which images it trains on."""
    return variant.split("/", 1)[0]


def set_of(images_path: str) -> tuple[str, str, str]:
    """(method, IPC, distill variant) of an images artifact from its workflow path
    `.../{method}/ipc{N}/{dv}/images.h5`."""
    parts = Path(images_path).parts
    if len(parts) < 4 or not parts[-3].startswith("ipc"):
        raise D3SError(f"{images_path}: not a workflow images path (.../METHOD/ipcN/VARIANT/images.h5)")
    return parts[-4], parts[-3][3:], parts[-2]


def reported_sets(images_paths: list[str], summary_tsv: str | None) -> list[str]:
    """The images artifacts the summary reports, one per (method, IPC): the distilled set of the row's
    chosen variant (a soft-label row first: a hard-label row uses the set its soft row chose). Without
    a summary every (method, IPC) must have one set (a path outside the workflow layout is drawn as
    given; with a summary such a path is an error)."""
    by_set: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for path in images_paths:
        try:
            method, ipc, dv = set_of(path)
        except D3SError:
            if summary_tsv is not None:
                raise
            method, ipc, dv = path, "", path  # a set outside the workflow's layout is its own group
        by_set[(method, ipc)][dv] = path
    chosen: dict[tuple[str, str], str] = {}
    if summary_tsv is not None:
        with open(summary_tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        try:
            rows.sort(key=lambda r: LABEL_ORDER.index(r.get("labels", "soft")))
            for r in rows:
                chosen.setdefault((r["method"], str(r["ipc"])), distilled_set(r["variant"]))
        except (KeyError, ValueError, AttributeError) as e:
            raise D3SError(
                f"{summary_tsv}: not a d3s summary table (columns method, ipc, labels "
                f"{'/'.join(LABEL_ORDER)}, variant expected; {type(e).__name__}: {e})"
            ) from None
    out = []
    for key, sets in by_set.items():
        if key in chosen:
            if chosen[key] not in sets:
                raise D3SError(
                    f"{summary_tsv}: {key[0]} IPC {key[1]} reports distilled set {chosen[key]!r}, "
                    f"not among the images given ({', '.join(sorted(sets))})"
                )
            out.append(sets[chosen[key]])
        elif len(sets) == 1:
            out.append(next(iter(sets.values())))
        else:
            raise D3SError(
                f"{key[0]} IPC {key[1]}: {len(sets)} distilled sets ({', '.join(sorted(sets))}) and "
                f"no summary row to choose one" + ("" if summary_tsv else "; pass the summary.tsv")
            )
    return out


def select_variants(results: list[dict], select_by: str | None) -> tuple[dict, list[dict]]:
    """(method, ipc, labels) -> chosen variant, and one sweep-table row per (method, ipc, labels, student, variant)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[(r["method"], r["ipc"], label_mode(r), r.get("variant", "default"), r["student"])].append(r)
    chosen, table = {}, []
    by_setting: dict[tuple, dict[str, dict[str, list[dict]]]] = defaultdict(lambda: defaultdict(dict))
    for (method, ipc, labels, variant, student), rs in groups.items():
        by_setting[(method, ipc, labels)][variant][student] = rs
    # soft first: a method's hard-label row then uses the distilled set its soft-label row chose
    # (HLR and LRS describe one set), choosing only the hard student's own settings
    for key, per_variant in sorted(by_setting.items(), key=lambda kv: LABEL_ORDER.index(kv[0][2])):
        names = sorted(per_variant)
        soft_choice = chosen.get((key[0], key[1], "soft"))
        if key[2] == "hard" and soft_choice and key[0] != "full":
            names = [n for n in names if distilled_set(n) == distilled_set(soft_choice)] or names
        students = sorted({s for v in per_variant.values() for s in v})
        if select_by is not None and select_by not in students:
            raise D3SError(
                f"{key[0]} IPC {key[1]} ({key[2]} labels): no results of the selecting student "
                f"{select_by} (students: {', '.join(students)})"
            )
        judge = select_by or students[0]
        if len(names) == 1:
            chosen[key] = names[0]
        else:
            scores = {}
            for name in names:
                vals = [r.get("val_top1") for r in per_variant[name].get(judge, [])]
                if not vals or any(v is None for v in vals):
                    raise D3SError(
                        f"{key[0]} IPC {key[1]} ({key[2]} labels), variant {name}: no validation accuracy "
                        f"from student {judge}; sweeps choose on the validation split (val_per_class)"
                    )
                scores[name] = statistics.fmean(vals)
            chosen[key] = max(names, key=lambda n: scores[n])  # ties: the first name
        for name in sorted(per_variant):
            for student in students:
                rs = per_variant[name].get(student, [])
                if not rs:
                    continue
                val = [100 * r["val_top1"] for r in rs if r.get("val_top1") is not None]
                v = mean_std(val) if len(val) == len(rs) else ("", "")
                t = mean_std([100 * r["top1"] for r in rs])
                table.append(
                    {
                        "method": key[0],
                        "ipc": "all" if key[1] is None else key[1],
                        "labels": key[2],
                        "student": student,
                        "variant": name,
                        "seeds": _seeds(rs),
                        "val_top1_mean": _round(v[0]),
                        "val_top1_std": _round(v[1]),
                        "top1_mean": _round(t[0]),
                        "top1_std": _round(t[1]),
                        "selected": "yes" if name == chosen[key] else "no",
                    }
                )
    return chosen, table


def _round(x):
    return round(x, 2) if isinstance(x, float) else x


def _seeds(rs: list[dict]) -> str:
    return ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))


def _order(method: str, ipc, labels: str, student: str) -> tuple:
    order = {m: i for i, m in enumerate(method_names())}
    return (ipc is None, ipc or 0, order.get(method, 99), LABEL_ORDER.index(labels), student)


def summarize(
    result_paths: list[str], teacher_paths: list[str], dataset: str, select_by: str | None = None
) -> tuple[list[dict], list[dict]]:
    """(summary rows of the chosen variants with metrics, sweep rows of every variant)."""
    teacher_acc = [100 * read_teacher_header(p).test_top1 for p in teacher_paths]
    results = [read_result(p) for p in result_paths]
    chosen, sweep_rows = select_variants(results, select_by)
    variants_tried = defaultdict(set)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        key = (r["method"], r["ipc"], label_mode(r))
        variants_tried[key].add(r.get("variant", "default"))
        if r.get("variant", "default") == chosen[key]:
            groups[(*key, r["student"])].append(r)
    rows = {}
    for (method, ipc, labels, student), rs in sorted(groups.items(), key=lambda kv: _order(*kv[0])):
        t1 = mean_std([100 * r["top1"] for r in rs])
        t5 = mean_std([100 * r["top5"] for r in rs])
        val = [100 * r["val_top1"] for r in rs if r.get("val_top1") is not None]
        v = mean_std(val) if val and len(val) == len(rs) else ("", "")
        steps = ""
        distill = rs[0]["protocol"].get("distill") or {}
        if method != "full":
            steps = int(distill.get("iterations", 0)) * int(rs[0]["n_images"]) if "iterations" in distill else 0
        rows[(method, ipc, labels, student)] = {
            "dataset": dataset,
            "method": method,
            "ipc": "all" if ipc is None else int(ipc),
            "labels": labels,
            "student": student,
            "seeds": _seeds(rs),
            "top1_mean": round(t1[0], 2),
            "top1_std": round(t1[1], 2),
            "top5_mean": round(t5[0], 2),
            "top5_std": round(t5[1], 2),
            "val_top1_mean": _round(v[0]),
            "val_top1_std": _round(v[1]),
            "variant": chosen[(method, ipc, labels)],
            "variants": len(variants_tried[(method, ipc, labels)]),
            "synthesis_image_steps": steps,
            "label_epochs": rs[0]["protocol"].get("label_epochs") or "",
            "teacher_top1": round(statistics.fmean(teacher_acc), 2) if teacher_acc else "",
            "protocol": ",".join(sorted({protocol_hash(r) for r in rs})),
            "_t1": t1,
        }
    _add_metrics(rows)
    for r in rows.values():
        del r["_t1"]
    return list(rows.values()), [
        {"dataset": dataset, **r}
        for r in sorted(
            sweep_rows,
            key=lambda r: (
                *_order(r["method"], None if r["ipc"] == "all" else r["ipc"], r["labels"], r["student"]),
                r["variant"],
            ),
        )
    ]


def _add_metrics(rows: dict) -> None:
    """IOR (vs random, same labels), HLR (vs full with hard labels) and LRS on every per-IPC row."""
    for (method, ipc, labels, student), row in rows.items():
        row.update(ior="", ior_sigmas="", hlr="", lrs="")
        if method == "full":
            continue
        rnd = rows.get(("random", ipc, labels, student))
        if rnd:
            (m, s), (rm, rs) = row["_t1"], rnd["_t1"]
            row["ior"] = round(m - rm, 2)
            pooled = math.hypot(s, rs)
            row["ior_sigmas"] = round((m - rm) / pooled, 2) if pooled > 0 and method != "random" else ""
        full_hard, own_hard = rows.get(("full", None, "hard", student)), rows.get((method, ipc, "hard", student))
        if full_hard and own_hard:
            row["hlr"] = round(full_hard["_t1"][0] - own_hard["_t1"][0], 2)
            soft, rnd_soft = rows.get((method, ipc, "soft", student)), rows.get(("random", ipc, "soft", student))
            if soft and rnd_soft:
                ior_soft = soft["_t1"][0] - rnd_soft["_t1"][0]
                row["lrs"] = round(label_robust_score(ior_soft, full_hard["_t1"][0] - own_hard["_t1"][0]), 2)


def _cell(value, std=None) -> str:
    if value == "":
        return ""
    return f"{value:.2f}" if std is None or std == "" else f"{value:.2f} ± {std:.2f}"


def write_tables(
    rows: list[dict],
    tsv: str,
    markdown: str,
    teacher_paths: list[str],
    sweep_rows: list[dict] | None = None,
    sweep_tsv: str | None = None,
) -> None:
    with atomic_path(tsv) as tmp:
        lines = ["\t".join(COLUMNS)] + ["\t".join(str(r[c]) for c in COLUMNS) for r in rows]
        tmp.write_text("\n".join(lines) + "\n")
    if sweep_tsv is not None:
        with atomic_path(sweep_tsv) as tmp:
            lines = ["\t".join(SWEEP_COLUMNS)] + ["\t".join(str(r[c]) for c in SWEEP_COLUMNS) for r in sweep_rows or []]
            tmp.write_text("\n".join(lines) + "\n")
    md = [
        "| dataset | method | IPC | labels | student | seeds | test top-1 (%) | val top-1 (%) | IOR | HLR | LRS | "
        "variant (of n) | protocol |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ior = _cell(r["ior"]) + (f" ({r['ior_sigmas']:+.1f}σ)" if r["ior_sigmas"] != "" else "")
        md.append(
            f"| {r['dataset']} | {r['method']} | {r['ipc']} | {r['labels']} | {r['student']} | {r['seeds']} | "
            f"{_cell(r['top1_mean'], r['top1_std'])} | {_cell(r['val_top1_mean'], r['val_top1_std'])} | "
            f"{ior} | {_cell(r['hlr'])} | {_cell(r['lrs'])} | {r['variant']} ({r['variants']}) | {r['protocol']} |"
        )
    md += ["", "Teachers (test top-1 on the real test set):", ""]
    for t in map(read_teacher_header, teacher_paths):
        md.append(f"- `{t.path}`: {t.arch}, seed {t.seed}, {100 * t.test_top1:.2f}%")
    md.append("")
    md.append(
        "Final-epoch accuracy, mean ± std over seeds. Each row is the sweep variant with the best mean "
        "validation top-1 (of n tried; sweep.tsv lists them all, their test accuracy never used to choose). "
        "IOR: top-1 minus random's at the same IPC and labels (σ: over the pooled std of the two); "
        "HLR: full-data hard-label top-1 minus the method's hard-label top-1; LRS: DD-Ranking's "
        "label-robust score (0-100) of the soft-label IOR and HLR. `protocol` hashes how students were trained "
        "and tested (equal hashes are comparable); each result JSON records it in full."
    )
    with atomic_path(markdown) as tmp:
        tmp.write_text("\n".join(md) + "\n")
