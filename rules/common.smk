# Config validation, wildcard constraints and every path/argument helper the rules use.
import hashlib
import math
import json
import os
import shlex

import sys

import jsonschema
import yaml
from snakemake.utils import validate

# Paths from this file, not from `workflow.basedir`: when the workflow is used as a module
# (`module d3s: snakefile: github(...)`, as snakedeploy writes it) basedir is the deploying
# workflow's folder, and this file may be remote (source_path caches it locally).
SCHEMA_FILE = str(workflow.source_path("../config/schema/config.schema.yaml"))
_CHECKOUT = os.path.dirname(
    str(workflow.current_basedir.get_path_or_uri(secret_free=True))
)
if os.path.isdir(os.path.join(_CHECKOUT, "d3s")):
    if _CHECKOUT not in sys.path:
        sys.path.append(
            _CHECKOUT
        )  # an installed d3s comes first (the rules run its `d3s` command)
    # what envs/d3s.post-deploy.sh installs into a new conda environment (--sdm conda)
    os.environ.setdefault("D3S_SOURCE", _CHECKOUT)
from d3s import settings  # torch-free: settings -> options, per-IPC schedules
from d3s import sweep as sweeps  # torch-free: the workflow plans sweep variants with it
from d3s.shard import PATTERN as SHARD_PATTERN, Shard, plan_shards
from d3s.dataset_spec import (
    DatasetSpec,
)  # torch-free: the dataset keys and their defaults
from d3s.hparams import SECTIONS
from d3s.methods import get_method, method_names, synthesising_methods
from d3s.sources import get_source, source_names

if "teacher" in config:
    raise ValueError(
        "config: the key `teacher` is now `teacher_training` (how teachers are trained; `teachers` "
        "says which): rename it"
    )

# YAML reads `50:` as an int key; JSON Schema checks keys as strings.
config["distill_by_ipc"] = {
    str(k): v for k, v in (config.get("distill_by_ipc") or {}).items()
}
for _entry in (config.get("sweep") or {}).values():
    if isinstance(_entry, dict) and isinstance(_entry.get("by_ipc"), dict):
        _entry["by_ipc"] = {str(k): v for k, v in _entry["by_ipc"].items()}
validate(config, SCHEMA_FILE)


with open(SCHEMA_FILE) as f:
    SCHEMA = yaml.safe_load(f)


def _check_distill_by_ipc():
    """Each per-IPC entry is checked against `distill`'s schema, its errors naming the entry."""
    schema = SCHEMA["properties"]["distill"]
    for ipc, entry in config["distill_by_ipc"].items():
        for error in jsonschema.Draft202012Validator(schema).iter_errors(entry):
            where = ".".join(["distill_by_ipc", ipc, *map(str, error.path)])
            raise ValueError(f"config: {where}: {error.message}")


_check_distill_by_ipc()


def _check_sweep():
    """Sweep grids: known methods and sections, values valid for their key, equal budgets."""
    sweeps.check_sweep(config["sweep"], config["methods"], config["ipcs"])
    for method, entry in config["sweep"].items():
        layers = [(f"sweep.{method}", entry)] + [
            (f"sweep.{method}.by_ipc.{i}", e)
            for i, e in (entry.get("by_ipc") or {}).items()
        ]
        for where, layer in layers:
            for section, keys in layer.items():
                if section == "by_ipc":
                    continue
                props = SCHEMA["properties"][section]["properties"]
                for key, values in keys.items():
                    if key not in props:
                        raise ValueError(
                            f"config: {where}.{section}.{key}: not a key of `{section}` ({', '.join(props)})"
                        )
                    for value in values:
                        for error in jsonschema.Draft202012Validator(
                            props[key]
                        ).iter_errors(value):
                            raise ValueError(
                                f"config: {where}.{section}.{key}: {value!r}: {error.message}"
                            )
    sweeps.check_budgets(
        config["sweep"], config["methods"], config["ipcs"], tuple(config["labels"])
    )
    if any(
        len(variants(m, i)) > 1 for m in config["methods"] for i in method_ipcs(m)
    ) and not config["datasets"][DATASET].get("val_per_class"):
        raise ValueError(
            f"config: sweep: variants are chosen on a validation split, and datasets.{DATASET}.val_per_class "
            "is 0; set it (e.g. 10) so the choice never looks at the test set"
        )


DATASET = config["dataset"]
if DATASET not in config["datasets"]:
    raise ValueError(
        f"config: dataset '{DATASET}' is not defined under 'datasets' "
        f"(defined: {', '.join(sorted(config['datasets']))})"
    )
RESULTS = f"results/{DATASET}"
# Checkpoint frequency changes no result, so it reaches the jobs (local, or SLURM jobs, which
# re-read this file) through the environment: a rule param would rerun them when it changes.
for _stage, _every in config["checkpoint_every"].items():
    _name = (
        "CHECKPOINT_MINUTES"
        if _stage == "minutes"
        else f"{_stage.upper()}_CHECKPOINT_EVERY"
    )
    os.environ[f"D3S_{_name}"] = str(_every)
# Speed knobs likewise (they change float rounding, not what is computed).
for _knob in ("channels_last", "compile"):
    os.environ[f"D3S_{_knob.upper()}"] = str(config[_knob]).lower()
if config["classes_per_shard"] and not config["datasets"][DATASET].get("num_classes"):
    raise ValueError(
        f"config: classes_per_shard is {config['classes_per_shard']}, so "
        f"datasets.{DATASET}.num_classes must be set (class blocks are planned before the data is read)"
    )


wildcard_constraints:
    dataset=r"[^/]+",
    teacher=r"(pretrained/)?[^/]+",
    name=r"[^/]+",
    arch=r"[^/]+",
    tseed=r"\d+",
    # the method registry (d3s/methods.py): distilled sets by distill_shard, real ones by select_real
    method="|".join(m for m in method_names() if get_method(m).per_ipc),
    synth="|".join(synthesising_methods()),
    coreset="|".join(
        m
        for m in method_names()
        if get_method(m).per_ipc and not get_method(m).synthesises
    ),
    labelmode=r"soft|hard",
    dv=r"[^/]+",
    rv=r"[^/]+",
    ev=r"[^/]+",
    labelset=r"[^/]+",
    ipc=r"\d+",
    shard=SHARD_PATTERN,
    student=r"[^/]+",
    seed=r"\d+",
    part=r"\d+",
    parts=r"\d+",


PACK_MIN_CLASSES = 100  # `pack` unset: an image folder this large is packed (its listing and decodes dominate)
PACK_DIR = config["prepare"]["dir"]
# What a packed file has already applied (the pixels); the rest travels with the packed spec.
# (split_seed is not one: it seeds the validation split, carved out when a stage loads the data)
PIXEL_KEYS = {
    "source",
    "root",
    "path",
    "torchvision_name",
    "download",
    "train_dir",
    "val_dir",
    "val_labels",
    "class_list",
    "channels",
    "image_size",
    "eval_resize",
    "test_fraction",
}


def is_packed(dataset):
    entry = config["datasets"][dataset]
    source = get_source(entry["source"], f"config: datasets.{dataset}")
    pack = entry.get("pack")
    if (
        pack is None
    ):  # unset: a large image folder is packed (its listing and decodes dominate)
        return source.decodes_files and entry.get("num_classes", 0) >= PACK_MIN_CLASSES
    if pack and not source.packable:
        packable = [n for n in source_names() if get_source(n).packable]
        raise ValueError(
            f"config: datasets.{dataset}.pack: only {' and '.join(packable)} sources are packed, "
            f"not '{entry['source']}' (it is read as it is)"
        )
    return bool(pack)


def packed_file(dataset):
    return f"{PACK_DIR}/{dataset}/data.h5"


def pack_parts(wildcards):
    """The temporary parts pack_merge appends, one per pack_part job."""
    n = config["prepare"]["parts"]
    return [f"{PACK_DIR}/{wildcards.dataset}/parts/{k}-of-{n}.h5" for k in range(n)]


def dataset_input(wildcards):
    """The packed file a job reads its data from, when the dataset is packed (else nothing)."""
    return [packed_file(wildcards.dataset)] if is_packed(wildcards.dataset) else []


def source_spec(wildcards):
    """The dataset entry as the JSON spec `d3s --data` takes, as the source is (keys at their
    defaults left out, as in the options: the package declares them once, d3s.settings).
    """
    entry = settings.without_defaults(
        DatasetSpec, config["datasets"][wildcards.dataset]
    )
    entry.pop("pack", None)
    return json.dumps({"name": wildcards.dataset, **entry}, sort_keys=True)


def pack_spec(wildcards):
    """What decides a packed file's pixels: changing augmentation or normalisation repacks nothing."""
    entry = json.loads(source_spec(wildcards))
    return json.dumps(
        {k: v for k, v in entry.items() if k in PIXEL_KEYS | {"name", "num_classes"}},
        sort_keys=True,
    )


def dataset_spec(wildcards):
    """The spec the stages read: the source's, or the packed HDF5 file with the training-side keys."""
    entry = json.loads(source_spec(wildcards))
    if not is_packed(wildcards.dataset):
        return json.dumps(entry, sort_keys=True)
    kept = {k: v for k, v in entry.items() if k not in PIXEL_KEYS}
    return json.dumps(
        {**kept, "source": "hdf5", "path": packed_file(wildcards.dataset)},
        sort_keys=True,
    )


def cli_options(section):
    """A config section as the command's options, defaults left out (d3s.settings.command_options)."""
    return settings.command_options(section, config.get(section, {}))


def distill_settings(ipc, dv=sweeps.DEFAULT):
    """The `distill` section as IPC `ipc` runs it: its `distill_by_ipc` entry applied, then the
    changes of the sweep variant named `dv`."""
    return settings.distill_settings(
        config, ipc, sweeps.parse_part(dv, "distill variant")
    )


def distill_options(wildcards):
    return settings.command_options(
        "distill", distill_settings(wildcards.ipc, wildcards.dv)
    )


def section_settings(section, part=sweeps.DEFAULT):
    """A section as a job of sweep variant part `part` runs it ('default': as configured)."""
    return {**config.get(section, {}), **sweeps.parse_part(part, f"{section} variant")}


def section_options(section, part):
    """A section's options with the changes of a sweep variant part ('default': none)."""
    return settings.command_options(section, section_settings(section, part))


def relabel_options(wildcards):
    return section_options("relabel", wildcards.rv)


def evaluate_options(wildcards):
    return section_options("evaluate", wildcards.ev)


def method_ipcs(method):
    return config["ipcs"] if get_method(method).per_ipc else [None]


def variants(method, ipc):
    """The sweep variants of a method at an IPC as {section: changes} (one, unchanged, without a sweep)."""
    base = {
        "distill": distill_settings(ipc) if ipc is not None else {},
        "relabel": config["relabel"],
        "evaluate": config["evaluate"],
    }
    return sweeps.variants(config["sweep"], method, ipc, base)


def variant_parts(method, ipc):
    """(distill part, relabel part, evaluate part) path segments of each variant."""
    return [
        tuple(
            sweeps.part_name(v.get(s, {})) for s in ("distill", "relabel", "evaluate")
        )
        for v in variants(method, ipc)
    ]


def images_file(method, ipc, dv=sweeps.DEFAULT, dataset=DATASET):
    return f"results/{dataset}/{method}/ipc{ipc}/{dv}/images.h5"


def init_images(wildcards):
    """distill --init herding|kcenter starts from that coreset's images of the same IPC."""
    init = distill_settings(wildcards.ipc, wildcards.dv).get("init")
    if init in ("herding", "kcenter"):
        return [images_file(init, wildcards.ipc, dataset=wildcards.dataset)]
    return []


def distill_digest(wildcards):
    """Short hash of an IPC's distillation options, the seed, teachers and statistics options."""
    blob = json.dumps(
        [
            distill_options(wildcards),
            init_images(wildcards),
            config["seed"],
            teacher_ids(),
            cli_options("stats"),
        ],
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_ids():
    """Trained teachers are '{arch}-s{seed}'; imported pretrained ones 'pretrained/{name}'."""
    t = config["teachers"]
    trained = [f"{a}-s{s}" for a in t["archs"] for s in t["seeds"]]
    return trained + [f"pretrained/{p['name']}" for p in t["pretrained"]]


def pretrained_entry(wildcards):
    for p in config["teachers"]["pretrained"]:
        if p["name"] == wildcards.name:
            return p
    raise ValueError(f"config: no teachers.pretrained entry named '{wildcards.name}'")


# Where fetch_pretrained writes the weights of a `checkpoint: timm:<model>`, outside results/.
PRETRAINED_DIR = "resources/pretrained"


def timm_pretrained(entry):
    """'resnet18.a1_in1k' for `checkpoint: timm:resnet18.a1_in1k`, else None (a local file)."""
    ckpt = entry["checkpoint"]
    return ckpt.removeprefix("timm:") if ckpt.startswith("timm:") else None


def pretrained_checkpoint(wildcards):
    p = pretrained_entry(wildcards)
    model = timm_pretrained(p)
    return f"{PRETRAINED_DIR}/timm/{model}.safetensors" if model else p["checkpoint"]


def pretrained_options(wildcards):
    p = pretrained_entry(wildcards)
    # the schema requires `arch` unless the checkpoint is timm:<model>, whose arch is the model
    opts = f"--arch {shlex.quote(p.get('arch') or timm_pretrained(p))}"
    if p.get("class_list"):
        opts += f" --class-list {shlex.quote(p['class_list'])}"
    return opts


def teacher_files(wildcards):
    return [f"results/{wildcards.dataset}/teachers/{t}.h5" for t in teacher_ids()]


def stats_files(wildcards):
    """D3S needs each teacher's statistics; SRe2L reads the BN buffers inside the teacher."""
    if not get_method(wildcards.get("synth", "d3s")).needs_stats:
        return []
    return [f"results/{wildcards.dataset}/stats/{t}.h5" for t in teacher_ids()]


def repeat_option(flag, paths):
    """['a', 'b'] -> '--flag a --flag b' (click's multiple options); one path may come as a string."""
    paths = [paths] if isinstance(paths, str) else paths
    return " ".join(f"{flag} {shlex.quote(str(p))}" for p in paths)


def shards(ipc):
    """The distillation shards of IPC `ipc` (d3s.shard: one spelling, the shard files' names)."""
    entry = config["datasets"][DATASET]
    return plan_shards(
        ipc,
        config["ipc_per_shard"],
        entry.get("num_classes"),
        config["classes_per_shard"],
    )


def shard_files(wildcards):
    ipc_dir = f"results/{wildcards.dataset}/{wildcards.synth}/ipc{wildcards.ipc}/{wildcards.dv}"
    return [f"{ipc_dir}/shards/{shard}.h5" for shard in shards(int(wildcards.ipc))]


def eval_files(wildcards):
    """Every student result: per (method, IPC, variant, label mode, student, seed), and per
    (variant, label mode, student, seed) for `full`. Soft-label students sit beside their labels
    ({dv}/{rv}/{ev}/), hard-label ones need none ({dv}/hard/{ev}/: a relabel change is no change).
    """
    root = f"results/{wildcards.dataset}"
    files = []
    for m in config["methods"]:
        for i in method_ipcs(m):
            for dv, rv, ev in variant_parts(m, i):
                for mode in config["labels"]:
                    if not get_method(m).per_ipc:
                        folder = f"{root}/{m}/{mode}/{ev}"
                    else:
                        folder = f"{root}/{m}/ipc{i}/{dv}/{rv if mode == 'soft' else 'hard'}/{ev}"
                    files += [
                        f"{folder}/{s}-s{seed}.json"
                        for s in config["students"]
                        for seed in config["eval_seeds"]
                    ]
    return list(dict.fromkeys(files))


def soft_labels_file(wildcards):
    """A soft-label student's labels.h5 (beside its folder); none for a hard-label one."""
    if wildcards.labelset == "hard":
        return []
    return f"results/{wildcards.dataset}/{wildcards.method}/ipc{wildcards.ipc}/{wildcards.dv}/{wildcards.labelset}/labels.h5"


def label_mode(wildcards):
    return "hard" if wildcards.labelset == "hard" else "soft"


def distilled_sets(method, ipc):
    """Every distilled set of a method at an IPC: one per distill variant of its sweep."""
    return list(
        dict.fromkeys(
            images_file(method, ipc, dv) for dv, _, _ in variant_parts(method, ipc)
        )
    )


def with_summary(sets, dataset, swept):
    """A plot's input: the sets, and the summary that says which set is reported when a
    distillation setting is swept (the plots then show what the table reports)."""
    return {
        "images": sets,
        **({"summary": f"results/{dataset}/summary.tsv"} if swept else {}),
    }


def shown_images(wildcards):
    """The images a grid may show for a method and IPC (it draws the reported one)."""
    sets = distilled_sets(wildcards.method, wildcards.ipc)
    return with_summary(sets, wildcards.dataset, len(sets) > 1)


def synthetic_images(wildcards):
    """The images artifacts of the synthesising methods (they carry loss curves), every variant."""
    per_ipc = [
        distilled_sets(m, i)
        for m in config["methods"]
        if get_method(m).synthesises
        for i in config["ipcs"]
    ]
    return with_summary(
        [p for sets in per_ipc for p in sets],
        wildcards.dataset,
        any(len(sets) > 1 for sets in per_ipc),
    )


def summary_option(wildcards, input):
    return f"--summary {input.summary}" if "summary" in input.keys() else ""


def final_outputs():
    outputs = [
        f"{RESULTS}/summary.tsv",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/sweep.tsv",
        f"{RESULTS}/plots/accuracy.png",
    ]
    if any(get_method(m).synthesises for m in config["methods"]):
        outputs.append(f"{RESULTS}/plots/losses.png")
    outputs += [
        f"{RESULTS}/plots/images_{m}_ipc{i}.png"
        for m in config["methods"]
        if get_method(m).per_ipc
        for i in config["ipcs"]
    ]
    return outputs


# Portable resources only; partitions, accounts and GPU models belong in profiles/slurm.
def grow_with_attempt(base):
    """A resource that grows with the retry attempt (a job killed for memory gets more)."""

    def value(wildcards, attempt):
        return base * attempt

    return value


def gpu_count():
    return 0 if config["device"] == "cpu" else 1


# Local scheduling. When more jobs are ready than cores, rules with a `priority:` start first:
# the critical path (train_teacher, extract_stats 3; distill_shard 2; relabel 1) and the root of
# each baseline's branch (select_real 3), so students and the full-data baseline fill the gaps
# instead of delaying the distillation behind them.
def job_threads(wanted):
    """A rule's threads: `wanted`, but in a local run at most half of --cores, so that on a small
    machine two jobs always run at once and one's start-up (~3 s of single-threaded imports)
    overlaps the other's compute. On 2 cores the embedded default ran in 0.75-0.87x the wall time
    of 2-thread jobs. Cluster jobs get `wanted` (the SLURM profile's set-threads overrides it).
    """

    def threads(wildcards):
        cores = workflow.resource_settings.cores
        if (
            not (workflow.local_exec and workflow.is_main_process)
            or not cores
            or cores < 2
        ):
            return wanted  # a cluster job; or one core, where Snakemake caps threads itself
        return max(1, min(wanted, cores // 2))

    return threads


# Memory requests from what a job loads, so attempt 1 fits (each retry asks for one base more).
# Measured on the CPU (benchmarks/README.md, scale rehearsal): a d3s process with torch, timm and
# h5py imported peaks near 1 GB; CUDA's host-side context adds about 2 GB on a GPU node.
TORCH_MB = 1500


def torch_mb():
    return TORCH_MB + (2000 if gpu_count() else 0)


def files_mb(paths):
    paths = [paths] if isinstance(paths, str) else list(paths)
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p)) / 2**20


def data_mb(dataset, splits):
    """Host memory of the dataset splits a job holds: HDF5 splits up to memory_limit_mb are loaded
    (a larger one is streamed); an image folder is decoded on the fly; small array sources load whole.
    """
    entry = config["datasets"][dataset]
    path = packed_file(dataset) if is_packed(dataset) else entry.get("path")
    if path:
        limit = entry.get("memory_limit_mb", 2048)
        return (
            min(files_mb(path), splits * limit)
            if os.path.exists(path)
            else splits * limit
        )
    return 200 * splits if entry["source"] == "imagefolder" else 500


def memory(base=None, data_splits=0, batch=None, test=False, **per_input):
    """mem_mb = (base + dataset splits held + factor x size of each named input + on a CPU the
    activations of the largest batch: `batch` names the config section whose batch_size the job
    trains or infers with, as the job's sweep variant sets it; `test` adds the test pass) x attempt.
    """

    def mem_mb(wildcards, input, attempt):
        mb = torch_mb() if base is None else base
        if data_splits:
            mb += data_mb(wildcards.dataset, data_splits)
        mb += sum(factor * files_mb(input[name]) for name, factor in per_input.items())
        largest = max(
            setting(batch, "batch_size", wildcards) if batch else 0,
            TEST_BATCH if test else 0,
        )
        mb += cpu_batch_mb(largest, dataset_side(wildcards.dataset))
        return int(math.ceil(mb * attempt))

    return mem_mb


def dataset_side(dataset):
    """Image side the stages see (sources without image_size: their native size, at most 32 here)."""
    return config["datasets"][dataset].get("image_size") or 32


# On a CPU a job's activations are host memory (on a GPU node they are the GPU's): allow this many
# times the batch's fp32 input (benchmarks/student_memory.py: ConvNet-3 at 128 px used ~21x in a
# test pass; ResNet-18 training keeps ~60x).
CPU_ACTIVATION_FACTOR = 64
TEST_BATCH = 512  # training.accuracy's batch: the test pass of every student job


# The wildcard naming a job's sweep variant of a section (distill's is dv, read by distill_settings).
VARIANT_WILDCARD = {"relabel": "rv", "evaluate": "ev"}


def setting(section, key, wildcards=None):
    """A section's setting as a job runs it: the config's (or the schema default), changed by the
    job's sweep variant when `wildcards` name one (a swept batch_size sizes its own jobs).
    """
    part = (
        getattr(wildcards, VARIANT_WILDCARD.get(section, ""), None)
        if wildcards
        else None
    )
    return section_settings(section, part or sweeps.DEFAULT).get(
        key, getattr(SECTIONS[section](), key)
    )


def images_header(path):
    """(uncompressed MB, side) of an images artifact from its header (no pixels read); the gzip
    file can be 20x smaller than what a job decompresses. Without h5py: 3x the file size.
    """
    try:
        import h5py

        with h5py.File(path, "r") as f:
            shape = f["images"].shape
        return math.prod(shape) / 2**20, shape[1]
    except (ImportError, OSError, KeyError):
        return 3 * files_mb(path), dataset_side(DATASET)


def cpu_batch_mb(batch, side):
    return (
        0
        if gpu_count()
        else batch * side * side * 3 * 4 * CPU_ACTIVATION_FACTOR / 2**20
    )


def val_splits(dataset):
    """A validation split is carved out of the training split, which the job then loads too."""
    return 1 if config["datasets"][dataset].get("val_per_class") else 0


def student_memory(section, data_splits=0):
    """relabel / evaluate_student: the distilled set, held once uncompressed (+50 %), the test split
    for a student, and on a CPU the activations of the largest batch."""

    def mem_mb(wildcards, input, attempt):
        set_mb, side = images_header(input.images)
        batch = max(
            setting(section, "batch_size", wildcards), TEST_BATCH if data_splits else 0
        )
        mb = torch_mb() + 1.5 * set_mb + cpu_batch_mb(batch, side)
        if data_splits:
            mb += data_mb(
                wildcards.dataset, data_splits + val_splits(wildcards.dataset)
            )
        return int(math.ceil(mb * attempt))

    return mem_mb


def shard_state_mb(wildcards):
    """A distillation shard's pixels in fp32 with their gradient and Adam's two moments, plus views."""
    shard = Shard.parse(wildcards.shard)
    classes = len(
        shard.classes(config["datasets"][wildcards.dataset].get("num_classes", 1000))
    )
    side = config["datasets"][wildcards.dataset].get("image_size") or 32
    return shard.ipc_count * classes * 3 * side * side * 4 * 6 / 2**20


def distill_memory(wildcards, input, attempt):
    mb = torch_mb() + 2 * files_mb(input.stats) + shard_state_mb(wildcards)
    batch = distill_settings(wildcards.ipc, wildcards.dv).get(
        "batch_size", setting("distill", "batch_size")
    )
    mb += cpu_batch_mb(batch, dataset_side(wildcards.dataset))
    if distill_settings(wildcards.ipc, wildcards.dv).get("init") == "real":
        mb += data_mb(wildcards.dataset, 1)
    # A coreset start is read whole (uncompressed) from its set.
    for path in getattr(input, "init", []):
        mb += images_header(path)[0]
    return int(math.ceil(mb * attempt))


def d3s_launcher(wildcards, resources):
    """`d3s`, or torchrun starting one d3s process per GPU when the job asks for several
    (set-resources: {evaluate_full: {gpu: 4}}); a params function of resources reruns nothing.

    A job that asks for GPUs says so in D3S_REQUESTED_GPUS: d3s then stops, rather than run on
    the CPU, when torch sees none in a SLURM job (runtime.allocated_gpus). SLURM's own GPU
    variables do not reach every job: the executor plugin runs an array task without srun,
    after removing them.
    """
    gpus = int(getattr(resources, "gpu", 0) or 0)
    command = "d3s"
    if gpus > 1:
        command = f"torchrun --standalone --nnodes 1 --nproc_per_node {gpus} -m d3s"
    return f"env D3S_REQUESTED_GPUS={gpus} {command}" if gpus else command


def input_option(flag, key=None):
    """A params function that turns the rule's input files into repeated `flag` options."""

    def option(wildcards, input):
        return repeat_option(flag, input[key] if key else input)

    return option


def output_option(flag):
    """A params function that turns the rule's output files into repeated `flag` options."""

    def option(wildcards, output):
        return repeat_option(flag, list(output))

    return option


# Student seeds: one job each, or (seeds_in_one_job) one job for all of a student's seeds.
def seed_files(pattern):
    """A student rule's outputs: `pattern` (a {seed} wildcard), or one file per seed of eval_seeds."""
    if not config["seeds_in_one_job"]:
        return pattern
    return expand(pattern, seed=config["eval_seeds"], allow_missing=True)


def seed_name(pattern):
    """A student job's log or benchmark file: per seed, or named for all seeds."""
    if not config["seeds_in_one_job"]:
        return pattern
    return pattern.replace("{seed}", "-".join(map(str, config["eval_seeds"])))


def seed_options(wildcards):
    seeds = [wildcards.seed] if "seed" in wildcards.keys() else config["eval_seeds"]
    return " ".join(f"--seed {s}" for s in seeds)


def print_summary(paths):
    """Show the results table at the end of a successful run."""
    for path in paths:
        if path.endswith(".md") and os.path.exists(path):
            print(f"\n{path}:\n")
            print(open(path).read())


def resume_dir(rule):
    """Sidecar checkpoint folder of a job: not a declared output, so a failed job keeps it."""

    def path(wildcards):
        parts = ",".join(f"{k}={v}" for k, v in sorted(wildcards.items()))
        return f"work/ckpt/{rule}/{parts}"

    return path


_check_sweep()  # last: it plans the variants with the helpers above
