"""Summary: one table of mean +- std over seeds per (dataset, method, IPC, student), plus teachers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections import defaultdict
from pathlib import Path

from .artifacts import atomic_path, open_artifact
from .errors import D3SError
from .hparams import RelabelParams

METHOD_ORDER = ["d3s", "sre2l", "random", "full"]
COLUMNS = ["dataset", "method", "ipc", "student", "seeds", "top1_mean", "top1_std", "top5_mean", "top5_std", "teacher_top1",
           "protocol"]


def protocol_hash(result: dict) -> str:
    """Short hash of how the student was trained and tested: rows with equal hashes are comparable."""
    keys = ("epochs", "batch_size", "lr", "weight_decay", "temperature", "t2_scale", "label_mode", "optimizer",
            "schedule", "reported", "label_epochs", "relabel", "crop_scale_min", "crop_scale_max")
    protocol = {k: result["protocol"].get(k) for k in keys}
    if result["protocol"].get("eval_resize"):  # test-time Resize -> CenterCrop; absent: plain resize (older results)
        protocol["eval_resize"] = result["protocol"]["eval_resize"]
    if protocol["relabel"]:
        # a setting at its default is what a result made before the setting existed did too
        defaults = {f.name: f.default for f in dataclasses.fields(RelabelParams)}
        protocol["relabel"] = {k: v for k, v in protocol["relabel"].items() if k not in defaults or v != defaults[k]}
    blob = json.dumps(protocol, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(result_paths: list[str], teacher_paths: list[str], dataset: str) -> list[dict]:
    teacher_acc = []
    for p in teacher_paths:
        with open_artifact(p, "teacher") as f:
            teacher_acc.append(100 * float(f.attrs["test_top1"]))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in result_paths:
        try:
            r = json.loads(Path(p).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise D3SError(f"{p}: unreadable result file ({e})") from None
        groups[(r["method"], r["ipc"], r["student"])].append(r)
    rows = []
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for (method, ipc, student), rs in sorted(
        groups.items(), key=lambda kv: (kv[0][1] is None, kv[0][1] or 0, order.get(kv[0][0], 99), kv[0][2])
    ):
        t1 = _mean_std([100 * r["top1"] for r in rs])
        t5 = _mean_std([100 * r["top5"] for r in rs])
        rows.append({
            "dataset": dataset, "method": method, "ipc": "all" if ipc is None else int(ipc), "student": student,
            "seeds": ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"])),
            "top1_mean": round(t1[0], 2), "top1_std": round(t1[1], 2),
            "top5_mean": round(t5[0], 2), "top5_std": round(t5[1], 2),
            "teacher_top1": round(statistics.fmean(teacher_acc), 2) if teacher_acc else "",
            "protocol": ",".join(sorted({protocol_hash(r) for r in rs})),
        })
    return rows


def write_tables(rows: list[dict], tsv: str, markdown: str, teacher_paths: list[str]) -> None:
    with atomic_path(tsv) as tmp:
        lines = ["\t".join(COLUMNS)] + ["\t".join(str(r[c]) for c in COLUMNS) for r in rows]
        tmp.write_text("\n".join(lines) + "\n")
    md = ["| dataset | method | IPC | student | seeds | top-1 (%) | top-5 (%) | protocol |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['dataset']} | {r['method']} | {r['ipc']} | {r['student']} | {r['seeds']} | "
                  f"{r['top1_mean']:.2f} ± {r['top1_std']:.2f} | {r['top5_mean']:.2f} ± {r['top5_std']:.2f} | {r['protocol']} |")
    md += ["", "Teachers (test top-1 on the real test set):", ""]
    for p in teacher_paths:
        with open_artifact(p, "teacher") as f:
            md.append(f"- `{p}`: {f.attrs['arch']}, seed {int(f.attrs['seed'])}, {100 * float(f.attrs['test_top1']):.2f}%")
    md.append("")
    md.append("Final-epoch accuracy, mean ± std over seeds. `protocol` hashes how students were trained and tested "
              "(rows with the same hash are comparable; `full` trains on other data by design); each result JSON "
              "records the protocol in full.")
    with atomic_path(markdown) as tmp:
        tmp.write_text("\n".join(md) + "\n")
