"""Resource plan on paper: jobs, images, decodes, bytes, host RAM and GPU-hours per stage of a preset.

    python benchmarks/scale_plan.py                                  # imagenet1k, imagenet21k, imagenet21k_p
    python benchmarks/scale_plan.py --preset config/presets/tiny_imagenet.yaml
    python benchmarks/scale_plan.py --gpu-json figures.json          # throughputs from benchmarks/gpu_check.py
    python benchmarks/scale_plan.py --json plan.json                 # also write the plan for machines

Needs only pyyaml and the standard library (no torch), so it runs in well under a second. Nothing
is measured here. The counts come from the preset (as Snakemake plans the DAG) and from the
published dataset sizes in SIZES. The GPU-hours come from throughputs: gpu_check's figures when
--gpu-json is given, otherwise the published figures in PUBLISHED. The source of every figure is
printed next to it, and assumptions are marked ASSUMED.

The config is built the way Snakemake builds it: run from the repository root, config/config.yaml
is loaded and the preset is merged over it. The preset therefore inherits that file's
`methods: [d3s, random, full]` unless it sets its own (the ImageNet presets set [d3s, random], so
they plan no evaluate_full). Then the schema's defaults fill every missing
key. --no-base plans the preset alone: that is what a dry run sees when its --directory has no
config/config.yaml, as in tests/workflow/test_workflow.py.

Columns: jobs; images read (samples a stage's loops consume, from disk or from an in-memory set);
JPEG decodes (only a packed dataset's pack_part jobs decode, or every reading job when the dataset
is not packed); net passes (images through a network: one forward, or one forward+backward, per
image; a distillation step over a batch counts batch images); bytes written (artifacts at their
uncompressed size: gzip makes image files smaller); checkpoint size and checkpoint bytes per hour
of one running job (checkpoint_every from the schema/preset: by count when its count is > 0, and/or
every checkpoint_every.minutes of wall time; a job no longer than a period writes none by it); peak host RAM of one job (mem_mb as
rules/*.smk request it at attempt 1: on a device: cpu config it includes the batches' activations, on a GPU
node those are GPU memory); GPU-hours of one (the longest) job, and of the whole stage.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path
from typing import NamedTuple

import yaml

from d3s.methods import get_method, synthesising_methods
from d3s.settings import distill_settings
from d3s.shard import Shard, plan_shards

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema" / "config.schema.yaml"
DEFAULT_PRESETS = [REPO / "config" / "presets" / f"{n}.yaml" for n in ("imagenet1k", "imagenet21k", "imagenet21k_p")]


# ------------------------------------------------------------------------------------------------
# Dataset sizes (published), keyed by the preset's dataset name


class Size(NamedTuple):
    train: int
    val: int
    classes: int
    source: str


SIZES = {
    "imagenet1k": Size(
        1_281_167,
        50_000,
        1000,
        "ILSVRC-2012: 1,281,167 train / 50,000 val images, 1,000 classes (Russakovsky et al., IJCV 2015)",
    ),
    # Fall 2011: 14,197,122 images in 21,841 synsets (image-net.org). There is no official split: the
    # preset's val/ is a held-out slice the user makes. 10 per class is ASSUMED here.
    "imagenet21k": Size(
        14_197_122 - 10 * 21_841,
        10 * 21_841,
        21_841,
        "fall 2011 release: 14,197,122 images, 21,841 classes (image-net.org); no official split, "
        "ASSUMED val = 10 per class held out (218,410)",
    ),
    "imagenet21k_p": Size(
        11_060_223,
        522_500,
        10_450,
        "ImageNet-21K-P winter 2021: 11,060,223 train / 522,500 val (50 per class), 10,450 classes "
        "(Ridnik et al. 2021; Alibaba-MIIL/ImageNet21K dataset_preprocessing/processing_instructions.md)",
    ),
    "tiny_imagenet": Size(
        100_000, 10_000, 200, "Tiny-ImageNet-200: 500 train / 50 val per class, 200 classes (CS231n)"
    ),
    "cifar10_jpeg": Size(50_000, 10_000, 10, "CIFAR-10: 50,000 train / 10,000 test (Krizhevsky 2009)"),
    "cifar100": Size(50_000, 10_000, 100, "CIFAR-100: 50,000 train / 10,000 test (Krizhevsky 2009)"),
    "mnist": Size(60_000, 10_000, 10, "MNIST: 60,000 train / 10,000 test (LeCun et al. 1998)"),
}


# ------------------------------------------------------------------------------------------------
# The memory model of rules/common.smk (and the mem_mb lines of rules/*.smk), replicated: nothing is
# parsed here. tests/unit/test_scale_plan.py evaluates the .smk expressions themselves and checks
# that these functions give the same numbers.

TORCH_MB = 1500  # common.smk TORCH_MB: a d3s process with torch, timm and h5py imported
CUDA_HOST_MB = 2000  # common.smk torch_mb(): CUDA's host-side context on a GPU node
MEMORY_LIMIT_MB = 2048  # schema datasets.*.memory_limit_mb default: an HDF5 split up to this is loaded
IMAGEFOLDER_SPLIT_MB = 200  # common.smk data_mb(): an image folder split is decoded on the fly
ARRAY_SOURCE_MB = 500  # common.smk data_mb(): small array sources load whole
PACK_MIN_CLASSES = 100  # common.smk: `pack` unset packs an image folder of this many classes
PACK_INDEX_EXTRA_MB = 1000  # prepare.smk pack_index: memory(base=TORCH_MB + 1000)
PACK_WORKER_MB = 400  # prepare.smk pack_part: TORCH_MB + 400 * threads
MERGE_EXTRA_MB = 500  # distill.smk merge_shards: memory(base=TORCH_MB + 500) (streams blocks of rows)
SHARD_STATE_COPIES = 6  # common.smk shard_state_mb: fp32 pixels, gradient, Adam's two moments, views
STATS_FACTOR = 2  # common.smk distill_memory: 2 x the statistics files
# common.smk student_memory (relabel, evaluate_student): the distilled set held once uncompressed, +50 %
# (images_header reads its shape: N x side x side x channels uint8, whatever the gzip file's size).
STUDENT_SET_FACTOR = 1.5
# common.smk cpu_batch_mb: on a CPU job (device: cpu) a batch's activations are host memory, this many
# times the batch's fp32 input; on a GPU job (device auto/cuda) they are the GPU's, and the term is 0.
CPU_ACTIVATION_FACTOR = 64
TEST_BATCH = 512  # common.smk TEST_BATCH: the test pass of train_teacher, import_teacher, the students
# Each rule's runtime (minutes at attempt 1: rules/*.smk `runtime=`), to flag jobs that run past it.
RUNTIME_MIN = {
    "pack_index": 60,
    "pack_part": 240,
    "pack_merge": 240,
    "dataset_info": 60,
    "train_teacher": 240,
    "import_teacher": 60,
    "extract_stats": 120,
    "distill_shard": 480,
    "merge_shards": 30,
    "select_real": 30,
    "relabel": 240,
    "evaluate_student": 480,
    "evaluate_full": 720,
}


def torch_mb(gpu: bool) -> float:
    return TORCH_MB + (CUDA_HOST_MB if gpu else 0)


def is_packed(entry: dict) -> bool:
    """common.smk is_packed: `pack` as set, else on for an image folder of >= PACK_MIN_CLASSES classes."""
    pack = entry.get("pack")
    if pack is None:
        return entry["source"] == "imagefolder" and entry.get("num_classes", 0) >= PACK_MIN_CLASSES
    return bool(pack)


def data_mb(entry: dict, splits: int, packed_mb: float | None) -> float:
    """common.smk data_mb: a packed (or hdf5) file is held up to splits x memory_limit_mb (packed_mb:
    its size, None before it exists); an image folder costs 200 MB a split; other sources 500 MB."""
    if is_packed(entry) or entry.get("path"):
        limit = entry.get("memory_limit_mb", MEMORY_LIMIT_MB)
        return min(packed_mb, splits * limit) if packed_mb is not None else splits * limit
    return IMAGEFOLDER_SPLIT_MB * splits if entry["source"] == "imagefolder" else ARRAY_SOURCE_MB


def job_mb(base: float, *parts: float) -> int:
    """mem_mb at attempt 1: ceil of the sum (common.smk memory(), student_memory() and distill_memory())."""
    return int(math.ceil(base + sum(parts)))


def cpu_batch_mb(batch: int, side: int, gpu: bool) -> float:
    """common.smk cpu_batch_mb: a batch's fp32 input (3 channels) x CPU_ACTIVATION_FACTOR on a CPU job, 0 on a GPU."""
    return 0 if gpu else batch * side * side * 3 * 4 * CPU_ACTIVATION_FACTOR / 2**20


def batch_mb(ctx: dict, section: str | None = None, test: bool = False, batch: int | None = None) -> float:
    """The activation term of common.smk memory(batch=section, test=...) / student_memory: the largest of the
    section's batch_size (or `batch`) and, with `test`, TEST_BATCH, at the dataset's side."""
    size = batch if batch is not None else ctx["config"][section]["batch_size"] if section else 0
    return cpu_batch_mb(max(size, TEST_BATCH if test else 0), ctx["side"], ctx["gpu"])


def shard_state_mb(ipc: int, classes: int, side: int) -> float:
    """common.smk shard_state_mb: a shard's pixels in fp32 with gradient, Adam moments and views."""
    return ipc * classes * 3 * side * side * 4 * SHARD_STATE_COPIES / 2**20


def merge_mb() -> int:
    return TORCH_MB + MERGE_EXTRA_MB


def pack_part_mb(threads: int) -> int:
    return TORCH_MB + PACK_WORKER_MB * threads


# ------------------------------------------------------------------------------------------------
# Config: base + preset merged as Snakemake merges config files, then the schema's defaults


def merge(base: dict, override: dict) -> dict:
    """snakemake.utils.update_config: nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def fill_defaults(schema: dict, instance, root: dict | None = None):
    """Fill missing keys with the schema's defaults, recursively (what snakemake's validate does)."""
    root = root or schema
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    if not isinstance(instance, dict):
        return instance
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            fill_defaults(sub, instance[key], root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(schema.get("properties", {})):
            fill_defaults(extra, instance[key], root)
    return instance


def load_config(preset: Path, schema_path: Path = SCHEMA) -> dict:
    """A preset as the workflow reads it: a whole config (it replaces config/config.yaml), defaults filled in."""
    config = fill_defaults(yaml.safe_load(schema_path.read_text()), yaml.safe_load(Path(preset).read_text()))
    config["distill_by_ipc"] = {str(k): v for k, v in (config.get("distill_by_ipc") or {}).items()}
    return config


# ------------------------------------------------------------------------------------------------
# The DAG's shape (shards: d3s.shard.plan_shards, as the rules; common.smk teacher_ids) and artifact sizes


def teacher_archs(config: dict) -> list[str]:
    t = config["teachers"]
    return [a for a in t["archs"] for _ in t["seeds"]] + [p["arch"] for p in t["pretrained"]]


def image_bytes(n: int, side: int, channels: int = 3) -> int:
    """uint8 images, n x side x side x channels (the images/shard/packed layout, before gzip)."""
    return n * side * side * channels


def packed_bytes(size: Size, entry: dict) -> int:
    """prepare.py: training images at eval_resize^2 (else image_size^2), test images at image_size^2, labels."""
    side, channels = entry["image_size"], entry.get("channels", 3)
    train_side = entry.get("eval_resize") or side
    return (
        image_bytes(size.train, train_side, channels)
        + image_bytes(size.val, side, channels)
        + 8 * (size.train + size.val)
    )


def label_bytes(epochs: int, n: int, classes: int, top_k: int) -> dict:
    """relabel.py _LabelWriter: per (epoch, image) a box (4 x f4) and a flip (1 B), plus dense fp16 logits,
    or the top-k fp16 logits, their classes (u2, or i4 over 2^16 classes) and an f4 log-sum-exp of the rest."""
    views = epochs * n * (16 + 1)
    k = top_k if 0 < top_k < classes else 0
    if k:
        logits = epochs * n * k * (2 + (2 if classes <= 2**16 else 4))
        rest = epochs * n * 4
    else:
        logits, rest = epochs * n * classes * 2, 0
    return {
        "logits": logits,
        "per_epoch_logits": logits // epochs,
        "total": logits + rest + views,
        "dense": epochs * n * classes * 2,
    }


# BatchNorm widths and parameter counts of the architectures the presets name. ResNet-18: 20 BN layers
# (5 each of 64/128/256/512 channels), 11,176,512 parameters before the head (torchvision/timm:
# 11,689,512 with the 1000-class head). The CIFAR stem's 3x3 conv has 7,680 fewer weights.
ARCHS = {
    "resnet18": {"bn": [64] * 5 + [128] * 5 + [256] * 5 + [512] * 5, "body": 11_176_512, "features": 512},
    "resnet18_cifar": {"bn": [64] * 5 + [128] * 5 + [256] * 5 + [512] * 5, "body": 11_168_832, "features": 512},
}


def arch_facts(arch: str, side: int, channels: int = 3) -> tuple[dict, bool]:
    """(facts, known): ConvNet-D[_wW] computed, the ResNets above, else ResNet-18's (ASSUMED)."""
    if arch.startswith("convnet") and arch[7:8].isdigit():
        depth = int(arch[7])
        width = int(arch.split("_w")[1].split("_")[0]) if "_w" in arch else 128
        size = side
        for _ in range(depth):
            size = size // 2 if size >= 2 else size
        body = 9 * width * (channels + width * (depth - 1)) + 2 * width * depth
        return {"bn": [width] * depth, "body": body, "features": width * size * size}, True
    if arch in ARCHS:
        return ARCHS[arch], True
    return ARCHS["resnet18"], False


def params(arch: str, classes: int, side: int, channels: int = 3) -> int:
    facts, _ = arch_facts(arch, side, channels)
    return facts["body"] + (facts["features"] + 1) * classes


def stats_bytes(arch: str, side: int) -> int:
    """stats.py: float64 mean [D] and covariance [D, D] per BatchNorm layer."""
    return sum(8 * (d * d + d) for d in arch_facts(arch, side)[0]["bn"])


def moving_moments_bytes(arch: str, side: int, blocks: int) -> int:
    """gaussian.MovingMoments in a D3S checkpoint: fp32 mean and second moment per block (+ their sum)."""
    if blocks <= 1:
        return 0
    return (blocks + 1) * sum(4 * (d * d + d) for d in arch_facts(arch, side)[0]["bn"])


def checkpoints_per_hour(every: int, unit_seconds: float, minutes: float, job_seconds: float | None = None) -> float:
    """checkpoint.Checkpointer.due: by count (every `every` units of `unit_seconds`; 0: never by count) or by
    time (`minutes` of wall time since the last save, which any save resets; 0: never by time). A job saves no
    checkpoint at its end, so one that runs no longer than a period writes none by it (job_seconds None: a job
    longer than both periods). Count alone when it comes at least as often as time; else both (an upper bound)."""
    job = math.inf if job_seconds is None else job_seconds
    count_s = every * unit_seconds if every > 0 and unit_seconds > 0 else math.inf
    time_s = 60 * minutes if minutes > 0 else math.inf
    by_count = 3600 / count_s if count_s < job else 0.0
    by_time = 3600 / time_s if time_s < job else 0.0
    if by_count >= by_time:
        return by_count
    return by_time + by_count


# ------------------------------------------------------------------------------------------------
# Throughputs: published figures (default) or gpu_check's JSON


REF_SIDE = 224
# Published, single GPU, ResNet-18 at 224 px.
TIMM_TRAIN = (
    2764.22,
    "published: timm results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv, resnet18 "
    "224 px, AMP, batch 512: 2,764 img/s training on an RTX 3090",
)
TIMM_INFER = (
    9260.29,
    "published: timm results/benchmark-infer-amp-nchw-pt240-cu124-rtx3090.csv, resnet18 "
    "224 px, AMP, batch 1024: 9,260 img/s inference on an RTX 3090",
)
# SRe2L-style recovery with CDA's curriculum (VILA-Lab/SRe2L CDA/README.md; ResNet-18, batch 100, RTX 4090):
# (side, GPU-hours, IPC, classes, iterations) -> seconds per image per optimisation step. The 21K figure
# ("about 55 hours ... on 4x 4090 GPUs") is read as 4 x 55 GPU-hours.
CDA_RECOVER = [
    (224, 29.0, 50, 1000, 4000, "ImageNet-1K IPC 50, 4K iterations: about 29 h on one RTX 4090"),
    (224, 4 * 55.0, 20, 10_450, 2000, "ImageNet-21K-P IPC 20, 2K iterations: about 55 h on 4x RTX 4090"),
    (64, 4.5, 50, 200, 4000, "Tiny-ImageNet IPC 50, 4K iterations: about 4.5 h on one RTX 4090"),
]
# Ratios measured in this repository on a 2-core CPU (benchmarks/README.md, ResNet-18 at 64 px):
# ASSUMED to hold on a GPU until gpu_check measures them there.
D3S_OVER_SRE2L = (
    1.74,
    "ASSUMED: a D3S step = 1.74 x an SRe2L step (the ratio measured on a 2-core CPU, "
    "benchmarks/README.md, ResNet-18 64 px; not on a GPU)",
)
STATS_OVER_INFER = (
    0.72,
    "ASSUMED: statistics pass = 0.72 x inference (the ratio measured on a 2-core CPU, "
    "benchmarks/README.md, ResNet-18 64 px; the GPU target is >= 0.8)",
)
RELABEL_OVER_INFER = (1.0, "ASSUMED: relabel = teacher inference on each view (view rendering not counted)")


def _both(v: float) -> dict:
    return {"fp32": v, "bf16": v}


def recover_reference(side: int, classes: int) -> tuple:
    """The CDA figure nearest in image side, then in class count (on a log scale)."""
    return min(CDA_RECOVER, key=lambda r: (abs(r[0] - side), abs(math.log(r[3] / classes))))


def published_throughput(side: int, classes: int = 1000) -> dict:
    """The default throughputs for images of `side` px. Published img/s figures are at 224 px and are
    scaled by the pixel count for other sides (ASSUMED); the recovery step time comes from the nearest
    CDA figure."""
    scale = (REF_SIDE / side) ** 2
    side_ref, hours, ref_ipc, ref_classes, iters, what = recover_reference(side, classes)
    per_image_step = hours * 3600 / (ref_ipc * ref_classes * iters)
    sre2l = per_image_step * (side / side_ref) ** 2
    infer = TIMM_INFER[0] * scale
    sources = [
        ("train_img_s", TIMM_TRAIN[1]),
        ("infer_img_s", TIMM_INFER[1]),
        ("stats_img_s", STATS_OVER_INFER[1]),
        ("relabel_img_s", RELABEL_OVER_INFER[1]),
        (
            "sre2l_step",
            f"published: CDA (VILA-Lab/SRe2L CDA/README.md): {what} -> {1e3 * per_image_step:.3f} ms per image-step",
        ),
        ("d3s_step", D3S_OVER_SRE2L[1]),
        ("precision", "ASSUMED: the published figures stand for fp32 and bf16 alike (AMP fp16 in timm's)"),
        ("models", "ASSUMED: every teacher and student costs what ResNet-18 costs"),
    ]
    others = [
        f"{r[5]} -> {1e3 * r[1] * 3600 / (r[2] * r[3] * r[4]):.3f} ms"
        for r in CDA_RECOVER
        if r[0] == side_ref and r[5] != what
    ]
    if others:
        sources.append(("sre2l_step_other", "published, not used (another dataset): " + "; ".join(others)))
    if side != REF_SIDE:
        sources.append(("pixels", f"ASSUMED: 224 px figures scaled by pixel count to {side} px"))
    if side != side_ref:
        sources.append(
            ("pixels_step", f"ASSUMED: the {side_ref} px recovery figure scaled by pixel count to {side} px")
        )
    return {
        "label": "published figures (RTX 3090 / RTX 4090, not A100: no A100 ResNet-18 figure was found)",
        "train_img_s": _both(TIMM_TRAIN[0] * scale),
        "infer_img_s": infer,
        "stats_img_s": infer * STATS_OVER_INFER[0],
        "relabel_img_s": _both(infer * RELABEL_OVER_INFER[0]),
        "step_s_per_image": {"sre2l": _both(sre2l), "d3s": _both(sre2l * D3S_OVER_SRE2L[0])},
        "sources": sources,
    }


def gpu_check_throughput(doc: dict, side: int, source: str = "gpu_check JSON") -> dict:
    """Throughputs from `gpu_check.py --json` (keys of gpu_check.check_case): the case nearest in pixels;
    a distillation step's ms / its batch is the time per image-step."""
    fig = min(doc["figures"], key=lambda f: abs(f["pixels"] - side))
    scale = (fig["pixels"] / side) ** 2

    def pick(key_fp32, key_bf16):
        fp32 = fig[key_fp32]
        bf16 = fig.get(key_bf16) or fp32
        return {"fp32": fp32, "bf16": bf16}

    train = {k: v * scale for k, v in pick("train_fp32_img_s", "train_bf16_img_s").items()}
    relabel = {k: v * scale for k, v in pick("relabel_fp32_img_s", "relabel_bf16_img_s").items()}
    steps = {
        m: {k: v / 1e3 / fig["batch"] / scale for k, v in pick(f"{m}_step_fp32_ms", f"{m}_step_bf16_ms").items()}
        for m in synthesising_methods()
    }
    where = (
        f"measured: {source} ({doc.get('device', '?')}), case '{fig['case']}' {fig['arch']} {fig['pixels']} px, "
        f"{fig['classes']} classes, batch {fig['batch']}"
    )
    sources = [("all", where)]
    if fig["pixels"] != side:
        sources.append(("pixels", f"ASSUMED: {fig['pixels']} px figures scaled by pixel count to {side} px"))
    sources.append(("models", f"ASSUMED: every teacher and student costs what {fig['arch']} costs"))
    return {
        "label": f"gpu_check figures, {doc.get('device', '?')}",
        "train_img_s": train,
        "infer_img_s": fig["inference_img_s"] * scale,
        "stats_img_s": fig["stats_img_s"] * scale,
        "relabel_img_s": relabel,
        "step_s_per_image": steps,
        "sources": sources,
    }


# ------------------------------------------------------------------------------------------------
# The plan

STAGES = [
    "pack_index",
    "pack_part",
    "pack_merge",
    "dataset_info",
    "train_teacher",
    "import_teacher",
    "extract_stats",
    "distill_shard",
    "merge_shards",
    "select_real",
    "relabel",
    "evaluate_student",
    "evaluate_full",
]
RESULT_JSON_BYTES = 4096  # ASSUMED size of a result/dataset JSON file
CHECKPOINT_KEYS = {
    "train_teacher": "teacher",
    "distill_shard": "distill",
    "evaluate_student": "evaluate",
    "evaluate_full": "evaluate_full",
}


def plan_stage(
    stage: str,
    jobs: int,
    read: float = 0,
    decodes: float = 0,
    passes: float = 0,
    written: float = 0,
    ram_mb: int = 0,
    gpu_hours: float = 0.0,
    job_hours: float | None = None,
    checkpoint_bytes: float = 0,
    checkpoints_per_h: float = 0.0,
) -> dict:
    """One row. Totals over the stage's jobs, except ram_mb, job_hours and the checkpoint columns (one job)."""
    return {
        "stage": stage,
        "jobs": jobs,
        "images_read": int(read),
        "jpeg_decodes": int(decodes),
        "net_passes": int(passes),
        "bytes_written": int(written),
        "checkpoint_bytes": int(checkpoint_bytes),
        "checkpoints_per_hour": checkpoints_per_h,
        "checkpoint_bytes_per_hour": checkpoint_bytes * checkpoints_per_h,
        "ram_mb": int(ram_mb),
        "gpu_hours": gpu_hours,
        "job_gpu_hours": job_hours,
        "runtime_limit_hours": RUNTIME_MIN[stage] / 60,
    }


def context(config: dict, sizes: dict, throughput: dict) -> dict:
    """What every stage's arithmetic needs, read off the config once."""
    name = config["dataset"]
    entry = config["datasets"][name]
    size = sizes[name]
    packed = is_packed(entry)
    packed_size = packed_bytes(size, entry) if packed and entry.get("image_size") else None
    decoding = entry["source"] == "imagefolder"  # a source of JPEG files (torchvision/hdf5 arrays decode nothing)
    methods = config["methods"]
    return {
        "config": config,
        "name": name,
        "entry": entry,
        "size": size,
        "tp": throughput,
        "classes": entry.get("num_classes") or size.classes,
        "side": entry.get("image_size") or 32,
        "channels": entry.get("channels", 3),
        "n_train": size.train,
        "n_val": size.val,
        "packed": packed,
        "decoding": decoding,
        "packed_size": packed_size,
        "packed_mb": packed_size / 2**20 if packed_size is not None else None,
        "dec": 0 if packed or not decoding else 1,  # JPEG decodes per real image read outside pack_part
        "archs": teacher_archs(config),
        "methods": methods,
        "synth": [m for m in methods if get_method(m).synthesises],
        "per_ipc": [m for m in methods if get_method(m).per_ipc],
        "gpu": config["device"] != "cpu",  # common.smk gpu_count(): 0 only for device: cpu
        "base_mb": torch_mb(config["device"] != "cpu"),
    }


def _data(ctx: dict, splits: int) -> float:
    return data_mb(ctx["entry"], splits, ctx["packed_mb"])


def _ckpt(config: dict, key: str, unit_seconds: float, job_seconds: float) -> float:
    """Checkpoints an hour of one job: checkpoint_every.<key> (units) and checkpoint_every.minutes."""
    every = config["checkpoint_every"]
    return checkpoints_per_hour(every[key], unit_seconds, every["minutes"], job_seconds)


def prepare_rows(ctx: dict) -> list[dict]:
    """pack_index -> pack_part x parts -> pack_merge, for a packed dataset."""
    if not ctx["packed"]:
        return []
    parts, n = ctx["config"]["prepare"]["parts"], ctx["n_train"] + ctx["n_val"]
    index_bytes = n * (8 + 48) + 8 * ctx["n_train"]  # labels, ~48 B file names (ASSUMED), the shuffled order
    packed = ctx["packed_size"] or 0
    return [
        plan_stage("pack_index", 1, written=index_bytes, ram_mb=TORCH_MB + PACK_INDEX_EXTRA_MB),
        plan_stage(
            "pack_part",
            parts,
            read=n,
            decodes=n if ctx["decoding"] else 0,
            written=packed,
            ram_mb=pack_part_mb(ctx["config"]["prepare"]["threads"]),
        ),
        plan_stage("pack_merge", 1, read=n, written=packed, ram_mb=TORCH_MB),
    ]


def teacher_rows(ctx: dict) -> list[dict]:
    """dataset_info, then every trained teacher and every imported one."""
    config, entry, tp, dec = ctx["config"], ctx["entry"], ctx["tp"], ctx["dec"]
    n_train, n_val, classes, side = ctx["n_train"], ctx["n_val"], ctx["classes"], ctx["side"]
    computes_norm = entry.get("mean") is None or entry.get("std") is None
    rows = [
        plan_stage(
            "dataset_info",
            1,
            read=n_train if computes_norm else 0,
            decodes=dec * n_train if computes_norm else 0,
            written=RESULT_JSON_BYTES + 16 * classes,
            ram_mb=job_mb(ctx["base_mb"], _data(ctx, 2)),
        )
    ]
    file_bytes = max([4 * params(a, classes, side, ctx["channels"]) for a in ctx["archs"]] or [0])
    t = config["teacher_training"]
    trained = len(config["teachers"]["archs"]) * len(config["teachers"]["seeds"])
    if trained:
        epoch_s = n_train / tp["train_img_s"][t["precision"]]
        job_h = (t["epochs"] * epoch_s + n_val / tp["infer_img_s"]) / 3600
        reads = trained * (t["epochs"] * n_train + n_val)
        rows.append(
            plan_stage(
                "train_teacher",
                trained,
                read=reads,
                decodes=dec * reads,
                passes=reads,
                written=trained * file_bytes,
                ram_mb=job_mb(ctx["base_mb"], _data(ctx, 2), batch_mb(ctx, "teacher_training", test=True)),
                gpu_hours=trained * job_h,
                job_hours=job_h,
                checkpoint_bytes=2 * file_bytes,  # weights + SGD momentum
                checkpoints_per_h=_ckpt(config, "teacher", epoch_s, job_h * 3600),
            )
        )
    imported = len(config["teachers"]["pretrained"])
    if imported:  # checks the weights, records their test accuracy
        job_h = n_val / tp["infer_img_s"] / 3600
        rows.append(
            plan_stage(
                "import_teacher",
                imported,
                read=imported * n_val,
                decodes=dec * imported * n_val,
                passes=imported * n_val,
                written=imported * file_bytes,
                ram_mb=job_mb(ctx["base_mb"], _data(ctx, 2), batch_mb(ctx, test=True)),
                gpu_hours=imported * job_h,
                job_hours=job_h,
            )
        )
    return rows


def stats_rows(ctx: dict) -> list[dict]:
    """One statistics pass per teacher over the training set (D3S only)."""
    k = len(ctx["archs"])
    if "d3s" not in ctx["methods"] or not k:
        return []
    views, n = max(1, ctx["config"]["stats"]["views"]), ctx["n_train"]
    job_h = n * views / ctx["tp"]["stats_img_s"] / 3600
    return [
        plan_stage(
            "extract_stats",
            k,
            read=k * n * views,
            decodes=ctx["dec"] * k * n,
            passes=k * n * views,
            written=sum(stats_bytes(a, ctx["side"]) for a in ctx["archs"]),
            ram_mb=job_mb(ctx["base_mb"], _data(ctx, 1), batch_mb(ctx, "stats")),
            gpu_hours=k * job_h,
            job_hours=job_h,
        )
    ]


def shard_job(ctx: dict, method: str, ipc: int, shard: Shard) -> dict:
    """One distill_shard job: its images, image-steps, seconds, host RAM and checkpoint."""
    config, side, channels, archs = ctx["config"], ctx["side"], ctx["channels"], ctx["archs"]
    ipcs, block = (shard.ipc_start, shard.ipc_end), shard.classes(ctx["classes"])
    s = distill_settings(config, ipc)
    k = 1 if s.get("teacher_mode") == "round_robin" else len(archs)  # teacher forwards per step
    step_s = ctx["tp"]["step_s_per_image"][method][s["precision"]] * k
    n = shard.ipc_count * len(block)
    stats_mb = sum(stats_bytes(a, side) for a in archs) / 2**20 if method == "d3s" else 0
    # common.smk: a shard of all classes is sized with num_classes, or 1000 when unset
    ram_classes = len(block) if config["classes_per_shard"] else ctx["entry"].get("num_classes", 1000)
    init_mb = _data(ctx, 1) if s["init"] == "real" else 0
    ckpt = 3 * 4 * n * channels * side * side  # fp32 pixels + Adam's two moments
    if method == "d3s" and archs:
        ckpt += len(archs) * moving_moments_bytes(archs[0], side, math.ceil(n / s["batch_size"]))
    return {
        "n": n,
        "read": n if s["init"] == "real" else 0,
        "passes": s["iterations"] * n * k,
        "seconds": s["iterations"] * n * step_s,
        "step_s": min(s["batch_size"], n) * step_s,
        "ram": job_mb(
            ctx["base_mb"],
            STATS_FACTOR * stats_mb,
            shard_state_mb(ipcs[1] - ipcs[0], ram_classes, side),
            batch_mb(ctx, batch=s["batch_size"]),
            init_mb,
        ),
        "ckpt": ckpt,
    }


def distill_rows(ctx: dict) -> list[dict]:
    """distill_shard per (method, IPC range, class block), merge_shards per (method, IPC); select_real per IPC."""
    config, side, channels, classes = ctx["config"], ctx["side"], ctx["channels"], ctx["classes"]
    rows = []
    jobs = [
        shard_job(ctx, m, ipc, shard)
        for m in ctx["synth"]
        for ipc in config["ipcs"]
        for shard in plan_shards(ipc, config["ipc_per_shard"], classes, config["classes_per_shard"])
    ]
    if jobs:
        longest = max(jobs, key=lambda j: j["seconds"])
        read = sum(j["read"] for j in jobs)
        per_set = [image_bytes(ipc * classes, side, channels) for _ in ctx["synth"] for ipc in config["ipcs"]]
        rows += [
            plan_stage(
                "distill_shard",
                len(jobs),
                read=read,
                decodes=ctx["dec"] * read,
                passes=sum(j["passes"] for j in jobs),
                written=sum(image_bytes(j["n"], side, channels) for j in jobs),
                ram_mb=max(j["ram"] for j in jobs),
                gpu_hours=sum(j["seconds"] for j in jobs) / 3600,
                job_hours=longest["seconds"] / 3600,
                checkpoint_bytes=longest["ckpt"],
                checkpoints_per_h=_ckpt(config, "distill", longest["step_s"], longest["seconds"]),
            ),
            plan_stage(
                "merge_shards",
                len(per_set),
                read=len(ctx["synth"]) * sum(config["ipcs"]) * classes,
                written=sum(per_set),
                ram_mb=merge_mb(),
            ),
        ]
    selections = [m for m in ctx["methods"] if m in ("random", "herding", "kcenter")]
    if selections:
        # a coreset (herding, kcenter) runs the teachers over the training set for its features
        coresets = len(selections) - ("random" in selections)
        n = sum(config["ipcs"]) * classes
        feature_s = ctx["n_train"] * len(ctx["archs"]) / ctx["tp"]["infer_img_s"]
        reads = len(selections) * n + coresets * len(config["ipcs"]) * ctx["n_train"]
        rows.append(
            plan_stage(
                "select_real",
                len(selections) * len(config["ipcs"]),
                read=reads,
                decodes=ctx["dec"] * reads,
                written=len(selections) * image_bytes(n, side, channels),
                ram_mb=job_mb(ctx["base_mb"], _data(ctx, 2), batch_mb(ctx, test=True)),
                gpu_hours=coresets * len(config["ipcs"]) * feature_s / 3600,
                job_hours=(feature_s if coresets else 0) / 3600,
            )
        )
    return rows


def label_and_student_rows(ctx: dict) -> list[dict]:
    """relabel per (method, IPC); evaluate_student per (method, IPC, student, seed)."""
    config, tp, classes, side, channels = ctx["config"], ctx["tp"], ctx["classes"], ctx["side"], ctx["channels"]
    ev, rl, k, n_val = config["evaluate"], config["relabel"], len(ctx["archs"]), ctx["n_val"]
    students, seeds = config["students"], len(config["eval_seeds"])
    per_job = len(students) * seeds * len(config["labels"])  # a student per label mode (soft, hard)
    student_ckpt = max(3 * 4 * params(s, classes, side, channels) for s in students)  # weights + AdamW moments
    train_rate = tp["train_img_s"][ev["precision"]]
    sets = [ipc * classes for _ in ctx["per_ipc"] for ipc in config["ipcs"]]
    if not sets:
        return []
    relabel_s = [rl["epochs"] * n * k / tp["relabel_img_s"][rl["precision"]] for n in sets]
    eval_s = [ev["epochs"] * n / train_rate + n_val / tp["infer_img_s"] for n in sets]
    # student_memory: the largest set uncompressed (as images_header reads it), x STUDENT_SET_FACTOR
    set_mb = STUDENT_SET_FACTOR * image_bytes(max(sets), side, channels) / 2**20
    reads = sum(ev["epochs"] * n + n_val for n in sets)
    return [
        plan_stage(
            "relabel",
            len(sets),
            read=sum(rl["epochs"] * n for n in sets),
            passes=sum(rl["epochs"] * n * k for n in sets),
            written=sum(label_bytes(rl["epochs"], n, classes, rl["top_k"])["total"] for n in sets),
            ram_mb=job_mb(ctx["base_mb"], set_mb, batch_mb(ctx, "relabel")),
            gpu_hours=sum(relabel_s) / 3600,
            job_hours=max(relabel_s) / 3600,
        ),
        plan_stage(
            "evaluate_student",
            per_job * len(sets),
            read=per_job * reads,
            decodes=per_job * ctx["dec"] * n_val * len(sets),
            passes=per_job * reads,
            written=per_job * len(sets) * RESULT_JSON_BYTES,
            # the training split is loaded too when a validation split is carved out of it
            ram_mb=job_mb(
                ctx["base_mb"],
                set_mb,
                batch_mb(ctx, "evaluate", test=True),
                _data(ctx, 1 + bool(ctx["entry"].get("val_per_class"))),
            ),
            gpu_hours=per_job * sum(eval_s) / 3600,
            job_hours=max(eval_s) / 3600,
            checkpoint_bytes=student_ckpt,
            checkpoints_per_h=_ckpt(config, "evaluate", max(sets) / train_rate, max(eval_s)),
        ),
    ]


def full_rows(ctx: dict) -> list[dict]:
    """evaluate_full per (student, seed): the whole training set, the teachers' soft labels online."""
    config, tp = ctx["config"], ctx["tp"]
    if "full" not in ctx["methods"]:
        return []
    ev, n_train, n_val = config["evaluate"], ctx["n_train"], ctx["n_val"]
    jobs = len(config["students"]) * len(config["eval_seeds"]) * len(config["labels"])
    # soft-label students run the teachers online (the slowest of the label modes sizes a job)
    online = len(ctx["archs"]) if "soft" in config["labels"] else 0
    per_image_s = 1 / tp["train_img_s"][ev["precision"]] + online / tp["infer_img_s"]
    job_s = ev["full_epochs"] * n_train * per_image_s + n_val / tp["infer_img_s"]
    reads = ev["full_epochs"] * n_train + n_val
    student_ckpt = max(3 * 4 * params(s, ctx["classes"], ctx["side"], ctx["channels"]) for s in config["students"])
    return [
        plan_stage(
            "evaluate_full",
            jobs,
            read=jobs * reads,
            decodes=jobs * ctx["dec"] * reads,
            passes=jobs * (ev["full_epochs"] * n_train * (1 + online) + n_val),
            written=jobs * RESULT_JSON_BYTES,
            ram_mb=job_mb(ctx["base_mb"], _data(ctx, 2), batch_mb(ctx, "evaluate", test=True)),
            gpu_hours=jobs * job_s / 3600,
            job_hours=job_s / 3600,
            checkpoint_bytes=student_ckpt,
            checkpoints_per_h=_ckpt(config, "evaluate_full", n_train * per_image_s, job_s),
        )
    ]


def plan_notes(ctx: dict, rows: list[dict]) -> list[str]:
    """What a reader of the table should not miss: sizes, bandwidth, checkpoint load, runtimes, assumptions."""
    config, entry, side, notes = ctx["config"], ctx["entry"], ctx["side"], []
    by_stage = {r["stage"]: r for r in rows}
    if "pack_part" in by_stage:
        parts = by_stage["pack_part"]["jobs"]
        notes.append(
            f"packed file: {fmt_bytes(ctx['packed_size'] or 0)} ({ctx['n_train']:,} training images at "
            f"{entry.get('eval_resize') or side} px, {ctx['n_val']:,} test images at {side} px); {parts} "
            f"pack_part job(s) of ~{fmt_count((ctx['n_train'] + ctx['n_val']) / parts)} decodes each"
        )
    full = by_stage.get("evaluate_full")
    if full and ctx["packed"]:
        train_s = full["job_gpu_hours"] * 3600 - ctx["n_val"] / ctx["tp"]["infer_img_s"]  # less the test pass
        rate = ctx["n_train"] * config["evaluate"]["full_epochs"] / train_s
        stored = (entry.get("eval_resize") or side) ** 2 * ctx["channels"]
        notes.append(
            f"evaluate_full reads {fmt_bytes(stored * rate)}/s of stored images to keep the GPU busy at "
            f"{rate:,.0f} img/s (the GPU-hours assume it is never starved)"
        )
    for r in rows:
        rate = r["checkpoints_per_hour"]
        if rate > 12 and r["checkpoint_bytes_per_hour"] > 10e9:  # more often than every 5 minutes
            key = CHECKPOINT_KEYS[r["stage"]]
            notes.append(
                f"{r['stage']}: a {fmt_bytes(r['checkpoint_bytes'])} checkpoint every {3600 / rate:.0f} s "
                f"(checkpoint_every.{key} = {config['checkpoint_every'][key]}): "
                f"{fmt_bytes(r['checkpoint_bytes_per_hour'])}/h per running job"
            )
    for r in rows:
        if r["job_gpu_hours"] and r["job_gpu_hours"] > r["runtime_limit_hours"]:
            notes.append(
                f"{r['stage']}: ~{r['job_gpu_hours']:.1f} GPU-h a job, past its rule's runtime "
                f"({r['runtime_limit_hours']:.0f} h at attempt 1): it resumes from checkpoints on retries, or "
                "set a larger runtime in the profile"
            )
    if config["relabel"]["top_k"] == 0 and ctx["classes"] > 1000:
        notes.append("relabel: dense labels at this class count; set relabel.top_k")
    unknown = sorted({a for a in ctx["archs"] + config["students"] if not arch_facts(a, side)[1]})
    if unknown:
        notes.append(f"ASSUMED: {', '.join(unknown)} sized as ResNet-18 (BN widths, parameters)")
    if entry.get("num_classes") and entry["num_classes"] != ctx["size"].classes:
        notes.append(f"the preset says {entry['num_classes']} classes, SIZES {ctx['size'].classes}")
    return notes


def plan(config: dict, sizes: dict, throughput: dict) -> dict:
    """The whole plan of one config: rows per stage (in DAG order), totals, notes."""
    ctx = context(config, sizes, throughput)
    rows = (
        prepare_rows(ctx)
        + teacher_rows(ctx)
        + stats_rows(ctx)
        + distill_rows(ctx)
        + label_and_student_rows(ctx)
        + full_rows(ctx)
    )
    rows = [r for r in rows if r["jobs"]]
    total = {
        key: sum(r[key] for r in rows)
        for key in ("jobs", "images_read", "jpeg_decodes", "net_passes", "bytes_written", "gpu_hours")
    }
    total["ram_mb"] = max(r["ram_mb"] for r in rows)
    return {
        "dataset": ctx["name"],
        "classes": ctx["classes"],
        "image_size": ctx["side"],
        "train_images": ctx["n_train"],
        "test_images": ctx["n_val"],
        "size_source": ctx["size"].source,
        "packed": ctx["packed"],
        "methods": ctx["methods"],
        "teachers": ctx["archs"],
        "students": config["students"],
        "ipcs": config["ipcs"],
        "throughput": throughput["label"],
        "sources": throughput["sources"],
        "stages": rows,
        "total": total,
        "not_in_dag": [s for s in STAGES if s not in {r["stage"] for r in rows}],
        "notes": plan_notes(ctx, rows),
    }


# ------------------------------------------------------------------------------------------------
# Output


def fmt_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def fmt_hours(h: float | None) -> str:
    if h is None:
        return "-"
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


COLUMNS = [
    ("stage", 16, "<"),
    ("jobs", 5, ">"),
    ("read", 7, ">"),
    ("decodes", 7, ">"),
    ("passes", 7, ">"),
    ("written", 9, ">"),
    ("ckpt", 8, ">"),
    ("ckpt/h", 8, ">"),
    ("RAM/job", 9, ">"),
    ("GPU-h/job", 9, ">"),
    ("GPU-h", 8, ">"),
]


def _line(cells: list[str]) -> str:
    return "  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, COLUMNS)).rstrip()


def render(p: dict, preset: str = "") -> str:
    head = (
        f"== {preset or p['dataset']}: {p['dataset']}, {p['classes']:,} classes, {p['image_size']} px, "
        f"{p['train_images']:,} train / {p['test_images']:,} test, {'packed' if p['packed'] else 'not packed'}"
    )
    lines = [
        head,
        f"   sizes: {p['size_source']}",
        f"   methods {', '.join(p['methods'])}; IPC {', '.join(map(str, p['ipcs']))}; teachers "
        f"{', '.join(p['teachers']) or '-'}; students {', '.join(p['students'])}",
        f"   throughput: {p['throughput']}",
        "",
        _line([c for c, _, _ in COLUMNS]),
        _line(["-" * w for _, w, _ in COLUMNS]),
    ]
    for s in p["stages"]:
        ckpt = s["checkpoint_bytes"]
        lines.append(
            _line(
                [
                    s["stage"],
                    str(s["jobs"]),
                    fmt_count(s["images_read"]),
                    fmt_count(s["jpeg_decodes"]),
                    fmt_count(s["net_passes"]),
                    fmt_bytes(s["bytes_written"]),
                    fmt_bytes(ckpt) if ckpt else "-",
                    fmt_bytes(s["checkpoint_bytes_per_hour"]) if ckpt else "-",
                    f"{s['ram_mb']:,} MB",
                    fmt_hours(s["job_gpu_hours"]),
                    fmt_hours(s["gpu_hours"]) if s["job_gpu_hours"] is not None else "-",
                ]
            )
        )
    t = p["total"]
    lines += [
        _line(["-" * w for _, w, _ in COLUMNS]),
        _line(
            [
                "total",
                str(t["jobs"]),
                fmt_count(t["images_read"]),
                fmt_count(t["jpeg_decodes"]),
                fmt_count(t["net_passes"]),
                fmt_bytes(t["bytes_written"]),
                "",
                "",
                f"{t['ram_mb']:,} MB",
                "",
                fmt_hours(t["gpu_hours"]),
            ]
        ),
    ]
    if p["not_in_dag"]:
        lines.append(f"   not in this DAG: {', '.join(p['not_in_dag'])}")
    lines += [f"   note: {n}" for n in p["notes"]]
    lines += ["   figures:"] + [f"     {k}: {v}" for k, v in p["sources"]]
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--preset",
        action="append",
        type=Path,
        help="a preset YAML (repeatable; default: " + ", ".join(p.stem for p in DEFAULT_PRESETS) + ")",
    )
    ap.add_argument("--gpu-json", type=Path, help="figures written by benchmarks/gpu_check.py --json")
    ap.add_argument("--json", type=Path, help="also write the plans here")
    args = ap.parse_args(argv)
    gpu_doc = json.loads(args.gpu_json.read_text()) if args.gpu_json else None
    plans, texts = [], []
    for preset in args.preset or DEFAULT_PRESETS:
        config = load_config(preset)
        name = config["dataset"]
        if name not in SIZES:
            raise SystemExit(f"scale_plan: no published size for dataset '{name}' ({preset}); add it to SIZES")
        side = config["datasets"][name].get("image_size") or 32
        classes = config["datasets"][name].get("num_classes") or SIZES[name].classes
        throughput = (
            gpu_check_throughput(gpu_doc, side, str(args.gpu_json)) if gpu_doc else published_throughput(side, classes)
        )
        p = plan(config, SIZES, throughput)
        p["preset"] = str(preset)
        plans.append(p)
        texts.append(render(p, Path(preset).name))
    print(("\n\n").join(texts))
    if args.json:
        args.json.write_text(json.dumps({"plans": plans}, indent=1) + "\n")
    return plans


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
