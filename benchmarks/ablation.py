"""Distillation variants at one IPC, against the random baseline, under a preset's protocol.

Reuses the teacher and statistics a workflow run made (results/<dataset>/...), then for each
variant runs the same `d3s` commands as the workflow (distill -> relabel -> evaluate, N seeds)
and prints final-epoch top-1, mean +- std. A variant is NAME=OPTIONS, the options overriding
the preset's `distill` section as the workflow runs this IPC (`distill_by_ipc` applied);
`--stats-views K` among them distils against statistics taken through K crop/flip views per
image (`extract-stats --views K`, computed once and cached):

    python benchmarks/ablation.py --preset config/presets/cifar10_jpeg.yaml --ipc 10 --seeds 0 1 \
        --variant 'd3s=' --variant 'init real=--init real' --variant 'sre2l=--method sre2l' \
        --variant 'views=--stats-views 1'

Work files go to work/ablation/<dataset>/ipc<N>/<variant>/ (reused when present: delete to redo).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def options(section: dict) -> list[str]:
    """A config section as CLI options, as the workflow's `cli_options` writes them."""
    out = []
    for key, value in section.items():
        name = key.replace("_", "-")
        out += [f"--{name}" if value else f"--no-{name}"] if isinstance(value, bool) else [f"--{name}", str(value)]
    return out


def run(args: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "d3s", *map(str, args)], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"failed ({log}):\n" + log.read_text()[-2000:])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", type=Path, required=True, help="config whose dataset, teacher and protocol to use")
    ap.add_argument("--ipc", type=int, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="student seeds")
    ap.add_argument("--variant", action="append", required=True, help="NAME=DISTILL OPTIONS (may be empty)")
    ap.add_argument("--random", action=argparse.BooleanOptionalAction, default=True, help="also run the random baseline")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    preset = yaml.safe_load(a.preset.read_text())
    config = {**base, **preset}
    name = config["dataset"]
    spec = json.dumps({"name": name, **config["datasets"][name]}, sort_keys=True)
    arch, tseed = config["teachers"]["archs"][0], config["teachers"]["seeds"][0]
    teacher = REPO / f"results/{name}/teachers/{arch}-s{tseed}.h5"
    stats = REPO / f"results/{name}/stats/{arch}-s{tseed}.h5"
    for path in (teacher, stats):
        if not path.exists():
            sys.exit(f"{path} is missing: run the workflow with {a.preset} first (its teacher and statistics are reused)")
    seed, rt = str(config.get("seed", 0)), ["--device", "auto", "--threads", str(a.threads)]
    by_ipc = {str(k): v for k, v in (config.get("distill_by_ipc") or {}).items()}
    distill = {**config["distill"], **by_ipc.get(str(a.ipc), {})}  # as the workflow distils this IPC

    variants = [v.split("=", 1) if "=" in v else (v, "") for v in a.variant]
    if a.random:
        variants.append(("random real", None))
    rows = []
    for label, opts in variants:
        work = REPO / "work" / "ablation" / name / f"ipc{a.ipc}" / re.sub(r"\W+", "_", label)
        work.mkdir(parents=True, exist_ok=True)
        images, labels = work / "images.h5", work / "labels.h5"
        seconds = {}
        if not images.exists():
            if opts is None:
                seconds["select"] = run(["select-real", "--data", spec, "--teacher", teacher, "--ipc", a.ipc,
                                         "--seed", seed, "--out", images], work / "select.log")
            else:
                words, variant_stats = shlex.split(opts), stats
                if "--stats-views" in words:
                    k = words.pop(words.index("--stats-views") + 1)
                    words.remove("--stats-views")
                    variant_stats = work.parent.parent / f"stats-views{k}.h5"
                    if not variant_stats.exists():
                        crop = str(distill.get("crop_scale_min", 0.5))
                        seconds["stats"] = run(["extract-stats", "--teacher", teacher, "--data", spec,
                                                *options(config["stats"]), "--views", k, "--crop-scale-min", crop,
                                                *rt, "--out", variant_stats], work / "stats.log")
                seconds["distill"] = run(["distill", "--teacher", teacher, "--stats", variant_stats, "--ipc-end", a.ipc,
                                          "--data", spec, "--seed", seed, *options(distill),
                                          *words, *rt, "--out", images], work / "distill.log")
        if not labels.exists():
            seconds["relabel"] = run(["relabel", "--images", images, "--teacher", teacher, "--seed", seed,
                                      *options(config["relabel"]), *rt, "--out", labels], work / "relabel.log")
        top1 = []
        for s in a.seeds:
            result = work / f"result-s{s}.json"
            if not result.exists():
                seconds[f"eval s{s}"] = run(["evaluate", "--images", images, "--labels", labels, "--data", spec,
                                             "--student", config["students"][0], "--seed", s,
                                             *options(config["evaluate"]), *rt, "--out", result], work / f"eval-s{s}.log")
            top1.append(100 * json.loads(result.read_text())["top1"])
        sd = statistics.stdev(top1) if len(top1) > 1 else 0.0
        rows.append((label, opts, statistics.mean(top1), sd, top1))
        print(f"{label:24s} {statistics.mean(top1):6.2f} ± {sd:4.2f}  {[round(t, 2) for t in top1]}  "
              f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items()) or 'cached'})", flush=True)

    print(f"\n{name}, IPC {a.ipc}, student {config['students'][0]}, seeds {a.seeds} (final-epoch top-1 %):\n")
    print("| variant | distill options | top-1 |\n|---|---|---|")
    for label, opts, mean, sd, _ in rows:
        print(f"| {label} | `{opts}` | {mean:.2f} ± {sd:.2f} |" if opts is not None else f"| {label} | | {mean:.2f} ± {sd:.2f} |")


if __name__ == "__main__":
    main()
