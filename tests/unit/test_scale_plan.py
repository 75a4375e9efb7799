"""benchmarks/scale_plan.py: the resource plan's arithmetic, checked against the rules and the presets."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml

from ..conftest import REPO

spec = importlib.util.spec_from_file_location("scale_plan", REPO / "benchmarks" / "scale_plan.py")
sp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sp)

PRESETS = REPO / "config" / "presets"
PLANNED = sorted(p for p in PRESETS.glob("*.yaml") if yaml.safe_load(p.read_text())["dataset"] in sp.SIZES)


def plan_of(name: str, throughput=None, **override):
    config = sp.load_config(PRESETS / f"{name}.yaml")
    config = sp.merge(config, override)
    entry = config["datasets"][config["dataset"]]
    tp = throughput or sp.published_throughput(entry["image_size"], entry["num_classes"])
    return config, sp.plan(config, sp.SIZES, tp)


def row(p: dict, stage: str) -> dict:
    return {r["stage"]: r for r in p["stages"]}[stage]


def preset_doc(name: str) -> dict:
    return yaml.safe_load((PRESETS / f"{name}.yaml").read_text())


def with_full(name: str) -> list[str]:
    """The preset's methods (the ImageNet presets leave out `full`) plus the full-data student."""
    methods = sp.load_config(PRESETS / f"{name}.yaml")["methods"]
    assert "full" not in methods, name
    return [*methods, "full"]


# ---------------------------------------------------------------------------------------------- the DAG's shape


@pytest.mark.parametrize("preset", PLANNED, ids=[p.stem for p in PLANNED])
def test_job_counts_follow_the_workflow_formulas(preset):
    """The formulas of tests/workflow/test_workflow.py::test_every_preset_plans_its_dag, on the preset alone."""
    config = sp.load_config(preset)
    p = sp.plan(
        config, sp.SIZES, sp.published_throughput(config["datasets"][config["dataset"]].get("image_size") or 32)
    )
    n_classes = config["datasets"][config["dataset"]].get("num_classes") or sp.SIZES[config["dataset"]].classes
    per_ipc = [len(range(0, i, config["ipc_per_shard"])) for i in config["ipcs"]]
    blocks = len(range(0, n_classes, config["classes_per_shard"])) if config["classes_per_shard"] else 1
    synth = len([m for m in config["methods"] if m in ("d3s", "sre2l")])
    per_ipc_methods = len([m for m in config["methods"] if m != "full"])
    jobs = {r["stage"]: r["jobs"] for r in p["stages"]}
    assert jobs.get("distill_shard", 0) == sum(per_ipc) * blocks * synth
    assert jobs["evaluate_student"] == (
        len(config["ipcs"])
        * len(config["students"])
        * len(config["eval_seeds"])
        * per_ipc_methods
        * len(config["labels"])
    )
    assert jobs["relabel"] == len(config["ipcs"]) * per_ipc_methods


def test_distill_jobs_of_the_imagenet_presets():
    for name, expected in (("imagenet1k", (1 + 5) * 2), ("imagenet21k", 10 * 22), ("imagenet21k_p", 10 * 11)):
        _, p = plan_of(name)
        assert row(p, "distill_shard")["jobs"] == expected, name
    config, p = plan_of("imagenet1k", methods=["d3s", "sre2l", "random", "full"])
    assert row(p, "distill_shard")["jobs"] == 2 * 12 and row(p, "merge_shards")["jobs"] == 2 * 2
    assert row(p, "relabel")["jobs"] == 3 * 2 and row(p, "evaluate_student")["jobs"] == 3 * 2 * 3


def test_imagenet21k_p_plan_matches_its_dry_run():
    """Job counts of `snakemake -n --configfile config/presets/imagenet21k_p.yaml`, run in a folder holding
    config/config.yaml (as from the repository root) and an empty resources/resnet18_in21k_p.safetensors:
    the stages the plan covers. The preset's methods are [d3s, random]: the dry run has no evaluate_full."""
    _, p = plan_of("imagenet21k_p")
    assert {r["stage"]: r["jobs"] for r in p["stages"]} == {
        "pack_index": 1,
        "pack_part": 64,
        "pack_merge": 1,
        "dataset_info": 1,
        "import_teacher": 1,
        "extract_stats": 1,
        "distill_shard": 110,
        "merge_shards": 1,
        "select_real": 1,
        "relabel": 2,
        "evaluate_student": 6,
    }
    assert "evaluate_full" in p["not_in_dag"] and "train_teacher" in p["not_in_dag"]


def test_a_preset_is_a_whole_config_and_the_schema_fills_the_rest():
    """As the Snakefile reads it: a preset replaces config/config.yaml (nothing of the digits run leaks in)."""
    schema = yaml.safe_load(sp.SCHEMA.read_text())["properties"]
    ckpt_defaults = {k: v["default"] for k, v in schema["checkpoint_every"]["properties"].items()}
    for name in ("imagenet1k", "imagenet21k_p", "tiny_imagenet"):
        preset = preset_doc(name)
        config = sp.load_config(PRESETS / f"{name}.yaml")
        assert config["methods"] == preset.get("methods", schema["methods"]["default"]), name
        assert set(config["datasets"]) == set(preset["datasets"])
        assert config["distill"]["iterations"] == preset["distill"].get("iterations", 1000)
        # the schema fills what the preset leaves out, key by key inside a mapping it sets in part
        assert config["checkpoint_every"] == {**ckpt_defaults, **preset.get("checkpoint_every", {})}, name
        assert config["datasets"][name]["memory_limit_mb"] == 2048
    for name in ("imagenet1k", "imagenet21k", "imagenet21k_p"):
        assert "full" not in sp.load_config(PRESETS / f"{name}.yaml")["methods"], name
        assert sp.load_config(PRESETS / f"{name}.yaml")["checkpoint_every"]["distill"] == 0, name


# ---------------------------------------------------------------------------------------------- per-image counts


def test_evaluate_reads_are_epochs_x_images_x_seeds_and_decodes_only_without_packing():
    # the preset plus the full-data student, so that evaluate_full is planned too
    config, p = plan_of("imagenet21k_p", methods=with_full("imagenet21k_p"))
    c, ev, seeds = 10_450, config["evaluate"], len(config["eval_seeds"])
    methods = [m for m in config["methods"] if m != "full"]
    assert methods == preset_doc("imagenet21k_p")["methods"]
    n_val = sp.SIZES["imagenet21k_p"].val
    per_set = ev["epochs"] * 20 * c
    e = row(p, "evaluate_student")
    assert e["images_read"] == len(methods) * seeds * (per_set + n_val)
    assert e["jpeg_decodes"] == 0  # packed: only pack_part decodes
    assert row(p, "pack_part")["jpeg_decodes"] == 11_060_223 + 522_500
    full = row(p, "evaluate_full")
    assert full["jobs"] == len(config["students"]) * seeds * len(config["labels"])
    assert full["images_read"] == seeds * (ev["full_epochs"] * 11_060_223 + n_val) and full["jpeg_decodes"] == 0
    assert "evaluate_full" not in {r["stage"] for r in plan_of("imagenet21k_p")[1]["stages"]}  # the preset as it is

    _, unpacked = plan_of(
        "imagenet21k_p", methods=with_full("imagenet21k_p"), datasets={"imagenet21k_p": {"pack": False}}
    )
    assert "pack_part" not in {r["stage"] for r in unpacked["stages"]}
    assert row(unpacked, "evaluate_student")["jpeg_decodes"] == len(methods) * seeds * n_val
    assert row(unpacked, "extract_stats")["jpeg_decodes"] == 11_060_223
    assert row(unpacked, "evaluate_full")["jpeg_decodes"] == full["images_read"]


def test_relabel_and_distill_counts():
    config, p = plan_of("imagenet1k")
    r, d = row(p, "relabel"), row(p, "distill_shard")
    assert r["images_read"] == 300 * (10 + 50) * 1000 * 2  # epochs x images x (d3s, random)
    assert d["net_passes"] == 4000 * (10 + 50) * 1000 and d["images_read"] == 0  # noise start: nothing read
    assert row(p, "select_real")["images_read"] == (10 + 50) * 1000


def _stated(pattern: str, text: str) -> tuple[float, int]:
    m = re.search(pattern, text)
    assert m, pattern
    s = m.group(1).replace(",", "")
    return float(s), len(s.split(".")[1]) if "." in s else 0


@pytest.mark.parametrize("name", ["imagenet21k", "imagenet21k_p"])
def test_top_k_label_bytes_match_the_preset_comment(name):
    """imagenet21k.yaml: 'Dense labels would be 300 x 436,820 x 21,841 fp16 = 5.7 TB (an epoch alone 19 GB);
    the top 100 logits per view are 52 GB, and 175 MB an epoch' (and the same comment in imagenet21k_p.yaml)."""
    text = (PRESETS / f"{name}.yaml").read_text()
    config = sp.load_config(PRESETS / f"{name}.yaml")
    c = config["datasets"][name]["num_classes"]
    n = config["ipcs"][0] * c
    b = sp.label_bytes(config["relabel"]["epochs"], n, c, config["relabel"]["top_k"])
    epochs, images, classes = (
        int(x.replace(",", "")) for x in re.search(r"(\d+) x ([\d,]+) x ([\d,]+) fp16", text).groups()
    )
    assert (epochs, images, classes) == (300, n, c)
    for pattern, value, unit in (
        (r"fp16 = ([\d.]+) TB", b["dense"], 1e12),
        (r"an epoch alone ([\d.]+) GB", b["dense"] / 300, 1e9),
        (r"are ([\d.]+) GB", b["logits"], 1e9),
        (r"([\d.]+) MB an epoch", b["per_epoch_logits"], 1e6),
    ):
        stated, decimals = _stated(pattern, text)
        assert round(value / unit, decimals) == stated, (pattern, value / unit)
    if name == "imagenet21k":
        assert round(b["logits"] / 1e9) == 52
    assert b["total"] > b["logits"]  # + boxes, flips, the rest's log-sum-exp
    assert row(plan_of(name)[1], "relabel")["bytes_written"] == 2 * b["total"]  # d3s and random


@pytest.mark.parametrize("name", ["imagenet1k", "imagenet21k", "imagenet21k_p"])
def test_merged_set_size_matches_the_preset_comment(name):
    text = (PRESETS / f"{name}.yaml").read_text()
    m = re.search(r"merged IPC-(\d+) set is ~?([\d.]+) GB", text)
    assert m
    ipc, stated = int(m.group(1)), m.group(2)
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    classes = sp.load_config(PRESETS / f"{name}.yaml")["datasets"][name]["num_classes"]
    assert round(sp.image_bytes(ipc * classes, 224) / 1e9, decimals) == float(stated)


def test_packed_file_size():
    entry = {"image_size": 224, "eval_resize": 256}
    size = sp.SIZES["imagenet1k"]
    assert sp.packed_bytes(size, entry) == 1_281_167 * 256 * 256 * 3 + 50_000 * 224 * 224 * 3 + 8 * 1_331_167
    assert sp.packed_bytes(size, {"image_size": 224}) < sp.packed_bytes(size, entry)
    # the plan stores what the preset says: eval_resize^2 training images where set, else image_size^2
    for name, train_side in (("imagenet1k", 256), ("imagenet21k", 256), ("imagenet21k_p", 224), ("tiny_imagenet", 64)):
        entry = sp.load_config(PRESETS / f"{name}.yaml")["datasets"][name]
        size = sp.SIZES[name]
        expected = (size.train * train_side**2 + size.val * entry["image_size"] ** 2) * 3 + 8 * (size.train + size.val)
        assert sp.packed_bytes(size, entry) == expected, name
        assert row(plan_of(name)[1], "pack_part")["bytes_written"] == expected, name


# ---------------------------------------------------------------------------------------------- memory = the rules'


def _smk_def(text: str, name: str) -> str:
    m = re.search(rf"^def {name}\(.*?(?=^\S)", text + "\n#", re.M | re.S)
    assert m, name
    return m.group(0)


SMK_CONSTANTS = ("TORCH_MB", "PACK_MIN_CLASSES", "CPU_ACTIVATION_FACTOR", "TEST_BATCH")  # scale_plan mirrors these


def _smk_namespace(config: dict) -> dict:
    """The memory helpers of rules/common.smk, executed as they are written there."""
    text = (REPO / "rules" / "common.smk").read_text()
    from d3s import settings
    from d3s import sweep as sweeps
    from d3s.hparams import SECTIONS
    from d3s.shard import Shard
    from d3s.sources import get_source, source_names

    ns = {
        "config": config,
        "os": os,
        "math": math,
        "json": json,
        "PACK_DIR": config["prepare"]["dir"],
        "sweeps": sweeps,
        "settings": settings,
        "SECTIONS": SECTIONS,
        "Shard": Shard,
        "DATASET": config.get("dataset"),
        "get_source": get_source,
        "source_names": source_names,
    }
    for const in (*SMK_CONSTANTS, "VARIANT_WILDCARD"):
        ns[const] = eval(re.search(rf"^{const} = ([^#\n]+)", text, re.M).group(1), ns)
    for fn in (
        "gpu_count",
        "torch_mb",
        "files_mb",
        "is_packed",
        "packed_file",
        "data_mb",
        "memory",
        "dataset_side",
        "section_settings",
        "setting",
        "images_header",
        "cpu_batch_mb",
        "val_splits",
        "student_memory",
        "shard_state_mb",
        "distill_settings",
        "distill_memory",
    ):
        exec(_smk_def(text, fn), ns)
    return ns


def _rule_mem_mb(rule: str):
    for path in sorted((REPO / "rules").glob("*.smk")):
        m = re.search(rf"^rule {rule}:\n(.*?)(?=^\S|\Z)", path.read_text() + "\n#", re.M | re.S)
        if m:
            return re.search(r"^\s+mem_mb=(.+?),?\s*$", m.group(1), re.M).group(1)
    raise AssertionError(f"no rule {rule}")


class _Input(list):
    def __init__(self, items=(), **named):
        super().__init__(items)
        self.__dict__.update(named)

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else super().__getitem__(key)


def _sparse(path, size: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def _images_file(path, shape: tuple[int, ...]) -> str:
    """An images artifact's header: an `images` dataset of this shape (uint8) with no data written, so the
    file stays a few kB whatever the shape (HDF5 allocates a contiguous dataset's space at its first write)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        f.create_dataset("images", shape=shape, dtype="uint8")
    return str(path)


CPU = {"device": "cpu"}


@pytest.mark.parametrize(
    "name,override",
    [
        ("imagenet21k_p", {}),
        ("tiny_imagenet", {}),
        ("imagenet1k", {"datasets": {"imagenet1k": {"pack": False}}}),
        ("imagenet1k", {**CPU, "distill": {"init": "real"}}),
        ("imagenet21k_p", CPU),
        ("tiny_imagenet", CPU),
    ],
    ids=["21k_p", "tiny_packed_small", "1k_unpacked", "1k_cpu_init_real", "21k_p_cpu", "tiny_cpu"],
)
def test_host_memory_per_job_is_what_the_rules_request(tmp_path, monkeypatch, name, override):
    """Each stage's RAM/job equals its rule's mem_mb expression (rules/*.smk, helpers from common.smk)
    evaluated on files of the sizes the plan assumes (sparse files; the distilled set an HDF5 header of the
    planned shape, which student_memory reads), at attempt 1. On device: cpu the batches' activations count."""
    config, p = plan_of(name, **override)
    entry = config["datasets"][name]
    c, side = entry["num_classes"], entry["image_size"]
    monkeypatch.chdir(tmp_path)
    ns = _smk_namespace(config)
    if sp.is_packed(entry):
        _sparse(tmp_path / config["prepare"]["dir"] / name / "data.h5", sp.packed_bytes(sp.SIZES[name], entry))
    archs = sp.teacher_archs(config)
    stats = [_sparse(tmp_path / f"stats{i}.h5", sp.stats_bytes(a, side)) for i, a in enumerate(archs)]
    ipc = max(config["ipcs"])
    images = _images_file(tmp_path / "images.h5", (ipc * c, side, side, entry.get("channels", 3)))
    assert os.path.getsize(images) < 2**20  # the request follows the header's shape, not the file's size
    step, block = config["ipc_per_shard"], config["classes_per_shard"]
    shard = SimpleNamespace(
        dataset=name,
        ipc=str(ipc),
        dv="default",
        shard=f"i0-{min(step, ipc)}_c" + (f"0-{min(block, c)}" if block else "all"),
    )
    plain = SimpleNamespace(dataset=name, ipc=str(ipc))
    cases = {
        "pack_index": (plain, _Input()),
        "pack_part": (plain, _Input()),
        "pack_merge": (plain, _Input()),
        "dataset_info": (plain, _Input()),
        "train_teacher": (plain, _Input()),
        "import_teacher": (plain, _Input()),
        "extract_stats": (plain, _Input()),
        "distill_shard": (shard, _Input(stats=stats)),
        "merge_shards": (plain, _Input([images])),
        "select_real": (plain, _Input()),
        "relabel": (plain, _Input(images=images)),
        "evaluate_student": (plain, _Input(images=images)),
        "evaluate_full": (plain, _Input()),
    }
    assert all(ns[const] == getattr(sp, const) for const in SMK_CONSTANTS)
    assert ns["images_header"](images) == (sp.image_bytes(ipc * c, side) / 2**20, side)
    checked = []
    for r in p["stages"]:
        wildcards, inputs = cases[r["stage"]]
        fn = eval(_rule_mem_mb(r["stage"]), ns)
        args = {"wildcards": wildcards, "input": inputs, "threads": config["prepare"]["threads"], "attempt": 1}
        expected = fn(**{k: args[k] for k in inspect.signature(fn).parameters})
        assert r["ram_mb"] == int(expected), (r["stage"], r["ram_mb"], expected)
        checked.append(r["stage"])
    assert {"dataset_info", "distill_shard", "relabel", "evaluate_student"} <= set(checked)
    if config["device"] == "cpu":  # the activation terms: 1k/21k_p import their teacher, tiny trains one and has full
        teacher = "train_teacher" if name == "tiny_imagenet" else "import_teacher"
        assert {teacher, "extract_stats"} <= set(checked) and (name != "tiny_imagenet" or "evaluate_full" in checked)


def test_cpu_jobs_add_the_activations_of_their_largest_batch():
    """tiny_imagenet (64 px): an image's fp32 input is 48 kB, x 64 = 3 MB of activations; on device: cpu a job
    adds that per image of its largest batch (with a test pass at least TEST_BATCH = 512) and has no 2,000 MB
    CUDA context. The fixed bases (pack_*, merge_shards: TORCH_MB + ...) know no device."""
    gpu_config, gpu = plan_of("tiny_imagenet")
    config, cpu = plan_of("tiny_imagenet", **CPU)
    assert gpu_config["device"] == "auto" and config["device"] == "cpu" and sp.cpu_batch_mb(1, 64, gpu=False) == 3
    largest = {
        "dataset_info": 0,
        "train_teacher": 512,
        "extract_stats": 256,
        "distill_shard": 200,
        "select_real": 512,
        "relabel": 512,
        "evaluate_student": 512,
        "evaluate_full": 512,
    }  # teacher 256, evaluate 256 < 512
    fixed = {"pack_index", "pack_part", "pack_merge", "merge_shards"}
    assert set(largest) | fixed == {r["stage"] for r in cpu["stages"]}
    for stage in fixed:
        assert row(cpu, stage)["ram_mb"] == row(gpu, stage)["ram_mb"], stage
    for stage, batch in largest.items():
        assert row(cpu, stage)["ram_mb"] == row(gpu, stage)["ram_mb"] - sp.CUDA_HOST_MB + 3 * batch, stage
    # on a GPU node nothing of a batch is host memory; at 224 px an image is 36.75 MB of activations on a CPU
    assert sp.cpu_batch_mb(1024, 224, gpu=True) == 0 and sp.cpu_batch_mb(1024, 224, gpu=False) == 1024 * 36.75


def test_student_jobs_hold_the_set_uncompressed():
    """student_memory: relabel and evaluate_student hold the largest set at its uncompressed size, x 1.5."""
    config, p = plan_of("imagenet1k")
    set_mb = sp.image_bytes(50 * 1000, 224) / 2**20  # IPC 50, 224 px: 7.5 GB
    assert row(p, "relabel")["ram_mb"] == math.ceil(sp.TORCH_MB + sp.CUDA_HOST_MB + 1.5 * set_mb)
    # the test split, and the training split the validation split (val_per_class) is carved out of
    assert config["datasets"]["imagenet1k"]["val_per_class"] > 0
    data = sp.data_mb(
        config["datasets"]["imagenet1k"],
        2,
        sp.packed_bytes(sp.SIZES["imagenet1k"], config["datasets"]["imagenet1k"]) / 2**20,
    )
    assert row(p, "evaluate_student")["ram_mb"] == math.ceil(sp.TORCH_MB + sp.CUDA_HOST_MB + 1.5 * set_mb + data)


def test_shard_state_is_the_rules_formula():
    ns = _smk_namespace({"datasets": {"x": {"image_size": 224, "num_classes": 10_450}}, "prepare": {"dir": "packed"}})
    for start, end, classes in ((0, 2, "0-1000"), (18, 20, "10000-10450"), (0, 10, "all")):
        w = SimpleNamespace(dataset="x", shard=f"i{start}-{end}_c{classes}")
        n = 10_450 if classes == "all" else int(classes.split("-")[1]) - int(classes.split("-")[0])
        assert sp.shard_state_mb(end - start, n, 224) == ns["shard_state_mb"](w)


# ---------------------------------------------------------------------------------------------- the 21K-P preset


def test_imagenet21k_p_preset():
    text = (PRESETS / "imagenet21k_p.yaml").read_text()
    config = yaml.safe_load(text)
    entry = config["datasets"]["imagenet21k_p"]
    assert config["dataset"] == "imagenet21k_p" and entry["num_classes"] == 10_450
    assert entry["root"] == "data/imagenet21k_p" and entry["class_list"] == "data/imagenet21k_p/classes.txt"
    # the release is already 224 x 224: packed and tested as it is, no Resize -> CenterCrop
    assert (
        entry.get("val_dir", "val") == "val"
        and "eval_resize" not in entry
        and entry["image_size"] == 224
        and entry["pack"] is True
    )
    assert config["prepare"] == {"parts": 64} and config["local_merge"] is False
    # its comments: "the packed file is 1.7 TB at 224 px"; "64 decode jobs, each ~170 k training images (~26 GB at 224 px)"
    size = sp.SIZES["imagenet21k_p"]
    stated, decimals = _stated(r"packed file is ([\d.]+) TB at 224 px", text)
    assert round(sp.packed_bytes(size, entry) / 1e12, decimals) == stated == 1.7
    per_part = size.train / config["prepare"]["parts"]
    assert round(per_part, -4) == 1e3 * _stated(r"each ~(\d+) k training images", text)[0]
    assert round(sp.image_bytes(per_part, 224) / 1e9) == _stated(r"\(~(\d+) GB at 224 px\)", text)[0]
    assert config["teachers"]["pretrained"][0]["checkpoint"] == "resources/resnet18_in21k_p.safetensors"
    size = sp.SIZES["imagenet21k_p"]
    assert (size.train, size.val, size.classes) == (11_060_223, 522_500, 10_450) and size.val == 50 * size.classes
    # every key the 21K preset has (the 21K-P preset is the same recipe on another release)
    assert set(yaml.safe_load((PRESETS / "imagenet21k.yaml").read_text())) <= set(config)


# ---------------------------------------------------------------------------------------------- throughput, checkpoints


def test_checkpoint_rate():
    assert sp.checkpoints_per_hour(500, 0.09, 15) == pytest.approx(3600 / 45)  # by count, every 45 s
    assert sp.checkpoints_per_hour(50, 60.0, 15) == pytest.approx(4 + 1.2)  # time (every 15 min) and count
    assert sp.checkpoints_per_hour(0, 1.0, 15) == 4 and sp.checkpoints_per_hour(0, 1.0, 0) == 0
    assert sp.checkpoints_per_hour(0, 1.0, 30) == 2 and sp.checkpoints_per_hour(0, 1.0, 7.5) == 8  # 60 / minutes
    # a job no longer than a period writes none by it (no save at a job's end)
    assert sp.checkpoints_per_hour(0, 1.0, 15, job_seconds=5 * 3600) == 4
    assert sp.checkpoints_per_hour(0, 1.0, 15, job_seconds=600) == 0
    assert sp.checkpoints_per_hour(0, 1.0, 15, job_seconds=900) == 0
    assert sp.checkpoints_per_hour(50, 60.0, 15, job_seconds=2000) == 4  # 3000 s count period: by time only
    assert sp.checkpoints_per_hour(50, 60.0, 0, job_seconds=2000) == 0
    assert sp.checkpoints_per_hour(500, 0.09, 15, job_seconds=30) == 0
    assert sp.checkpoints_per_hour(500, 0.09, 15, job_seconds=60) == pytest.approx(80)


@pytest.mark.parametrize("name", ["imagenet1k", "imagenet21k", "imagenet21k_p"])
def test_imagenet_presets_checkpoint_by_time_only(name):
    """checkpoint_every: {distill: 0, evaluate: 0}: a shard and a student save every checkpoint_every.minutes
    (the schema's 15 unless set), a job of at most that many minutes none; a count > 0 adds its own rate."""
    config, p = plan_of(name)
    every = config["checkpoint_every"]
    assert every == {**every, **preset_doc(name)["checkpoint_every"]} and every["distill"] == every["evaluate"] == 0
    for stage in ("distill_shard", "evaluate_student"):
        r = row(p, stage)
        job_s = r["job_gpu_hours"] * 3600
        assert job_s > 60 * every["minutes"], stage  # long enough to save by time
        assert r["checkpoints_per_hour"] == pytest.approx(60 / every["minutes"]), stage
        assert r["checkpoint_bytes_per_hour"] == pytest.approx(r["checkpoint_bytes"] * 60 / every["minutes"]), stage
        # a period longer than the job: nothing by time
        _, longer = plan_of(name, checkpoint_every={"minutes": 2 * job_s / 60})
        assert row(longer, stage)["checkpoints_per_hour"] == 0, stage
        _, never = plan_of(name, checkpoint_every={"minutes": 0})
        assert row(never, stage)["checkpoints_per_hour"] == 0 and row(never, stage)["checkpoint_bytes_per_hour"] == 0
    # by count as well: every 500 optimisation steps of batch_size images (one teacher, d3s's step time)
    _, counted = plan_of(name, checkpoint_every={"distill": 500})
    s = config["distill"]
    step_s = (
        s["batch_size"]
        * sp.published_throughput(224, config["datasets"][name]["num_classes"])["step_s_per_image"]["d3s"][
            s["precision"]
        ]
    )
    by_count = 3600 / (500 * step_s)
    expected = by_count if by_count >= 60 / every["minutes"] else by_count + 60 / every["minutes"]
    assert row(counted, "distill_shard")["checkpoints_per_hour"] == pytest.approx(expected)


def test_published_synthesis_step_comes_from_cda():
    one_k = sp.published_throughput(224, 1000)["step_s_per_image"]
    assert one_k["sre2l"]["fp32"] == pytest.approx(29 * 3600 / (50 * 1000 * 4000))
    assert one_k["d3s"]["bf16"] == pytest.approx(one_k["sre2l"]["bf16"] * 1.74)
    assert sp.published_throughput(224, 10_450)["step_s_per_image"]["sre2l"]["fp32"] == pytest.approx(
        4 * 55 * 3600 / (20 * 10_450 * 2000)
    )
    _, p = plan_of("imagenet1k")
    assert row(p, "distill_shard")["gpu_hours"] == pytest.approx(4000 * 60_000 * one_k["d3s"]["bf16"] / 3600)
    assert any(k == "d3s_step" and v.startswith("ASSUMED") for k, v in p["sources"])


def _gpu_doc(scale: float) -> dict:
    fig = {
        "case": "ImageNet-like",
        "arch": "resnet18",
        "pixels": 224,
        "classes": 1000,
        "batch": 256,
        "train_fp32_img_s": 1000,
        "train_bf16_img_s": 2000,
        "inference_img_s": 4000,
        "stats_img_s": 3000,
        "relabel_fp32_img_s": 3000,
        "relabel_bf16_img_s": 4000,
        "d3s_step_fp32_ms": 200,
        "d3s_step_bf16_ms": 100,
        "sre2l_step_fp32_ms": 150,
        "sre2l_step_bf16_ms": 75,
    }
    fig = {k: (v * scale if k.endswith("_img_s") else v / scale if k.endswith("_ms") else v) for k, v in fig.items()}
    small = {**fig, "case": "Tiny-ImageNet-like", "pixels": 64, "train_bf16_img_s": 1e9}  # must not be picked
    return {"device": "Fake GPU", "figures": [small, fig]}


def test_gpu_json_sets_the_gpu_hours_in_proportion(tmp_path):
    paths = []
    for scale in (1, 2):
        paths.append(tmp_path / f"figures{scale}.json")
        paths[-1].write_text(json.dumps(_gpu_doc(scale)))
    # the preset plus the full-data student (it lists only d3s and random), so that evaluate_full is planned
    doc = {**preset_doc("imagenet21k_p"), "methods": with_full("imagenet21k_p")}
    preset = tmp_path / "imagenet21k_p_full.yaml"
    preset.write_text(yaml.safe_dump(doc))
    config = sp.load_config(preset)
    one, two = (
        sp.main(["--preset", str(preset), "--gpu-json", str(p), "--json", str(tmp_path / "plan.json")])[0]
        for p in paths
    )
    gpu_stages = [r["stage"] for r in one["stages"] if r["gpu_hours"]]
    assert {"extract_stats", "distill_shard", "relabel", "evaluate_student", "evaluate_full"} <= set(gpu_stages)
    for stage in gpu_stages:
        assert row(two, stage)["gpu_hours"] == pytest.approx(row(one, stage)["gpu_hours"] / 2), stage
    # the preset's precisions pick the bf16 figures: 2000 iterations x 209,000 images x 100 ms / 256 images
    assert row(one, "distill_shard")["gpu_hours"] == pytest.approx(2000 * 209_000 * 0.1 / 256 / 3600)
    # full_epochs over the training set, each image a bf16 training step and (soft labels) one teacher forward
    assert config["labels"] == ["soft"] and len(sp.teacher_archs(config)) == 1
    full = config["evaluate"]["full_epochs"] * 11_060_223 * (1 / 2000 + 1 / 4000) + 522_500 / 4000
    assert row(one, "evaluate_full")["job_gpu_hours"] == pytest.approx(full / 3600)
    assert row(one, "evaluate_full")["jobs"] == len(config["eval_seeds"]) * len(config["students"])
    plain = sp.main(["--preset", str(PRESETS / "imagenet21k_p.yaml"), "--gpu-json", str(paths[0])])[0]
    assert "evaluate_full" not in {r["stage"] for r in plain["stages"]}
    assert row(plain, "distill_shard")["gpu_hours"] == pytest.approx(row(one, "distill_shard")["gpu_hours"])
    assert row(one, "pack_part")["gpu_hours"] == 0
    assert "Fake GPU" in one["throughput"]
    written = json.loads((tmp_path / "plan.json").read_text())["plans"][0]
    assert written["dataset"] == "imagenet21k_p" and written["total"]["gpu_hours"] == pytest.approx(
        two["total"]["gpu_hours"]
    )


def test_the_script_prints_a_table_per_default_preset_without_importing_torch():
    code = (
        "import runpy, sys\nsys.argv = ['scale_plan.py']\ntry:\n    runpy.run_path(sys.argv_path, run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\nassert 'torch' not in sys.modules\nprint('NO_TORCH')\n"
    )
    code = code.replace("sys.argv_path", repr(str(REPO / "benchmarks" / "scale_plan.py")))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for name in ("imagenet1k", "imagenet21k", "imagenet21k_p"):
        assert f"== {name}.yaml: {name}," in out, name
    assert out.count("GPU-h/job") == 3 and out.count("\ntotal ") == 3 and "NO_TORCH" in out
    stages = [
        "pack_part",
        "import_teacher",
        "extract_stats",
        "distill_shard",
        "merge_shards",
        "select_real",
        "relabel",
        "evaluate_student",
    ]
    full = [p.stem for p in sp.DEFAULT_PRESETS if "full" in sp.load_config(p)["methods"]]
    for stage in stages + (["evaluate_full"] if full else []):
        assert f"\n{stage} " in out, stage
    if not full:  # none of the default presets lists `full`: no row, and each table says so
        assert "\nevaluate_full " not in out
        not_in = [line for line in out.splitlines() if line.strip().startswith("not in this DAG:")]
        assert len(not_in) == 3 and all("evaluate_full" in line for line in not_in)
    assert "ASSUMED" in out and "published" in out
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale_plan.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0 and done.stdout == out.replace("NO_TORCH\n", "")
