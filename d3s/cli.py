"""The `d3s` command line: one thin click command per pipeline stage.

Each command reads explicit input files, writes one output file (atomically) and takes the
stage's hyperparameters as options; the Snakemake rules call exactly these commands.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import EXIT_PREEMPTED, D3SError, Preempted
from .hparams import DistillParams, EvalParams, RealTrainingParams, RelabelParams, StatsParams
from .methods import get_method, synthesising_methods


def _hparam_options(cls):
    """Add one click option per hyperparameter field of dataclass `cls` (default and help from the field)."""

    def deco(fn):
        for f in reversed(dataclasses.fields(cls)):
            name = f.name.replace("_", "-")
            help_text = f.metadata.get("help", "")
            if isinstance(f.default, bool):
                fn = click.option(
                    f"--{name}/--no-{name}", f.name, default=f.default, show_default=True, help=help_text
                )(fn)
            else:
                fn = click.option(
                    f"--{name}", f.name, type=_option_type(f), default=f.default, show_default=True, help=help_text
                )(fn)
        return fn

    return deco


def _option_type(field: dataclasses.Field):
    """A setting's click type: its choices, or its number type within its declared bounds."""
    meta = field.metadata
    if meta.get("choices"):
        return click.Choice(meta["choices"])
    bounds = meta.get("bounds", {})
    if not bounds or type(field.default) not in (int, float):
        return type(field.default)
    lower = bounds.get("minimum", bounds.get("exclusive_minimum"))
    upper = bounds.get("maximum", bounds.get("exclusive_maximum"))
    ranged = click.IntRange if type(field.default) is int else click.FloatRange
    return ranged(lower, upper, min_open="exclusive_minimum" in bounds, max_open="exclusive_maximum" in bounds)


def _take(cls, kwargs: dict):
    """Pop the fields of `cls` out of click's kwargs and build the dataclass."""
    return cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})


# Stages that run on several processes (torchrun --nproc_per_node N d3s <stage> ...): the rest refuse.
MULTI_PROCESS_STAGES = ("train-teacher", "evaluate", "evaluate-full", "relabel")


def _runtime_options(fn):
    """--device, --threads, --channels-last, --compile, --verbose: where and how fast a stage runs."""
    fn = click.option("--verbose", is_flag=True, help="debug logging")(fn)
    fn = click.option(
        "--compile/--no-compile",
        "compile_models",
        default=False,
        show_default=True,
        envvar="D3S_COMPILE",
        show_envvar=True,
        help="torch.compile the trained / relabelling models (minutes of start-up; for long GPU jobs)",
    )(fn)
    fn = click.option(
        "--channels-last",
        type=click.Choice(["auto", "on", "off"]),
        default="auto",
        show_default=True,
        envvar="D3S_CHANNELS_LAST",
        show_envvar=True,
        help="NHWC memory format for models and batches; auto: on CUDA only",
    )(fn)
    fn = click.option(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch, for the whole job: split over torchrun's processes (default: torch's choice)",
    )(fn)
    fn = click.option(
        "--device",
        default="auto",
        show_default=True,
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N; under torchrun each rank "
        "takes the GPU of its LOCAL_RANK",
    )(fn)

    @functools.wraps(fn)
    def wrapper(*args, device, threads, channels_last, compile_models, verbose, **kwargs):
        from . import distributed
        from .checkpoint import install_stop_handlers
        from .runtime import configure, configure_speed, resolve_device, setup_logging

        stage = click.get_current_context().info_name
        world = distributed.launched_world_size()
        setup_logging(verbose, rank=int(os.environ.get("RANK", "0")))
        try:
            if world > 1 and stage not in MULTI_PROCESS_STAGES:
                raise D3SError(
                    f"{stage} runs on one process; started with WORLD_SIZE={world} "
                    f"(torchrun runs {', '.join(MULTI_PROCESS_STAGES)})"
                )
            if world > 1 and threads:  # --threads is the job's: each of its processes gets a share
                threads = max(1, threads // world)
            configure(threads, kwargs.get("seed"))
            if getattr(kwargs.get("checkpoints"), "directory", None):  # only a stage that checkpoints defers a stop
                install_stop_handlers()
            run_on = distributed.init_from_env(resolve_device(device))
            configure_speed(run_on, channels_last, compile_models)
            return fn(*args, device=run_on, threads=threads or 0, **kwargs)
        finally:
            distributed.shutdown()

    return wrapper


def _resume_options(stage: str, every: int, unit: str):
    """--resume-dir / --checkpoint-every / --checkpoint-minutes: checkpoints a restarted job continues from.

    The workflow sets the frequency through D3S_<STAGE>_CHECKPOINT_EVERY and
    D3S_CHECKPOINT_MINUTES, not rule params: it changes no result, and a param change would
    rerun the job.
    """

    def deco(fn):
        fn = click.option(
            "--checkpoint-minutes",
            type=click.FloatRange(min=0),
            default=15.0,
            show_default=True,
            envvar="D3S_CHECKPOINT_MINUTES",
            show_envvar=True,
            help="with --resume-dir: also save a checkpoint every M minutes of wall time (0: never by time)",
        )(fn)
        fn = click.option(
            "--checkpoint-every",
            type=click.IntRange(min=0),
            default=every,
            show_default=True,
            envvar=f"D3S_{stage.upper()}_CHECKPOINT_EVERY",
            show_envvar=True,
            help=f"with --resume-dir: save a checkpoint every N {unit} (0: only on a stop signal: SIGTERM, SIGUSR1, SIGURG)",
        )(fn)
        fn = click.option(
            "--resume-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="sidecar directory for checkpoints (not the output's folder); resumed when it holds a "
            "checkpoint of the same config, inputs, class order and code; removed after success",
        )(plan(fn))
        return fn

    def plan(fn):
        """The three options as one value: the stage gets `checkpoints` (a checkpoint.CheckpointPlan)."""

        @functools.wraps(fn)
        def wrapper(*args, resume_dir, checkpoint_every, checkpoint_minutes, **kwargs):
            from .checkpoint import CheckpointPlan

            return fn(*args, checkpoints=CheckpointPlan(resume_dir, checkpoint_every, checkpoint_minutes), **kwargs)

        return wrapper

    return deco


def _data_option(fn):
    return click.option(
        "--data",
        "data",
        required=True,
        metavar="SPEC",
        help="dataset spec: a YAML/JSON mapping such as '{source: digits}' or a YAML file holding one "
        "(keys as in config/schema/config.schema.yaml, section 'datasets')",
    )(fn)


class StageGroup(click.Group):
    """The `d3s` group: every command's D3SError becomes a one-line error (exit 1, no traceback) and a
    stop signal that saved a checkpoint becomes exit 75, here once rather than in each command."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except D3SError as e:
            raise click.ClickException(str(e)) from None
        except Preempted as e:
            click.echo(f"Preempted: {e}", err=True)
            ctx.exit(EXIT_PREEMPTED)


existing = click.Path(exists=True, dir_okay=False)
output = click.Path(dir_okay=False, writable=True)


@click.group(cls=StageGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="d3s")
def main():
    """D3S dataset distillation, one command per stage.

    \b
    [pack-index -> pack (per part) -> pack-merge: an image folder packed once into HDF5]
    dataset-info -> train-teacher (or import-teacher) -> extract-stats
      -> distill (per IPC shard) -> merge -> relabel
      -> evaluate (per student, seed, label mode, sweep variant) -> summarize
    [select-real: random / herding / kcenter real images; export: other tools' layouts]

    Every artifact is an HDF5 file that records its class order, seed, config and code
    version. The Snakemake workflow in this repository chains these commands; run them by
    hand to debug one stage.
    """
    from .install import check_installed_source

    check_installed_source()


@main.command("pack-index")
@_data_option
@click.option("--seed", type=int, default=0, help="seed of the shuffled order the training images are stored in")
@click.option("--out", required=True, type=output, help="file index to write (.h5)")
@_runtime_options
def pack_index_cmd(data, seed, out, device, threads):
    """List a dataset source once: class order, files, labels and a shuffled training order.

    The first of the three packing steps (pack-index -> pack per part -> pack-merge); the only
    one that walks the image folder.
    """
    from .dataset_spec import DatasetSpec
    from .prepare import write_index

    write_index(DatasetSpec.parse(data), out, seed)


@main.command("pack")
@click.option("--index", "index", required=True, type=existing, help="file index from pack-index (.h5)")
@click.option("--part", type=click.IntRange(min=0), default=0, show_default=True, help="which part (0-based)")
@click.option(
    "--parts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="how many parts the index is split into (one job each)",
)
@click.option("--out", required=True, type=output, help="packed part to write (.h5)")
@_runtime_options
def pack_cmd(index, part, parts, out, device, threads):
    """Decode one part of a file index into uint8 arrays, with THREADS decode workers (1: in this process).

    Training images are stored at eval_resize x eval_resize (shorter side resized, centre crop),
    test images at the evaluation protocol: Resize(eval_resize) -> CenterCrop(image_size).
    """
    from .prepare import pack_part

    pack_part(index, part, parts, out, threads or 1)


@main.command("pack-merge")
@click.option("--part", "parts", multiple=True, required=True, type=existing, help="packed part (repeat, any order)")
@click.option("--out", required=True, type=output, help="packed dataset file to write (.h5; the hdf5 source layout)")
def pack_merge_cmd(parts, out):
    """Append packed parts into one dataset file, a bounded block at a time (memory: one block)."""
    from .prepare import merge_packed
    from .runtime import setup_logging

    setup_logging()
    merge_packed(list(parts), out)


@main.command("dataset-info")
@_data_option
@click.option("--out", required=True, type=output, help="dataset description to write (.json)")
@_runtime_options
def dataset_info_cmd(data, out, device, threads):
    """Class order, split sizes, image format and normalisation of a dataset (computed once).

    Mean/std come from the spec when it gives them, else one streamed pass over the training split.
    """
    from .dataset_info import write_dataset_info
    from .dataset_spec import DatasetSpec

    write_dataset_info(DatasetSpec.parse(data), out, threads)


@main.command("train-teacher")
@_data_option
@click.option(
    "--info", type=existing, default=None, help="dataset-info JSON to take the normalisation from (default: compute it)"
)
@click.option(
    "--arch", required=True, help="architecture name: a built-in (convnet3, resnet18_cifar, ...) or any timm model"
)
@click.option("--seed", type=int, default=0, help="seed for initialisation, batch order and augmentation")
@click.option("--out", required=True, type=output, help="teacher artifact to write (.h5)")
@_hparam_options(RealTrainingParams)
@_resume_options("teacher", 5, "epochs")
@_runtime_options
def train_teacher_cmd(data, info, arch, seed, out, checkpoints, device, threads, **kw):
    """Train a teacher on the real training set; record its test accuracy.

    Writes OUT with the weights (plain HDF5 datasets, no pickle), the normalisation, class
    order and training loss curve.
    """
    from .dataset_spec import DatasetSpec
    from .teacher import train_teacher

    train_teacher(
        DatasetSpec.parse(data), arch, _take(RealTrainingParams, kw), seed, out, device, threads, info, checkpoints
    )


@main.command("import-teacher")
@_data_option
@click.option("--info", type=existing, default=None, help="dataset-info JSON to take the normalisation from")
@click.option("--arch", required=True, help="architecture the checkpoint belongs to (built-in or timm name)")
@click.option(
    "--checkpoint",
    required=True,
    type=existing,
    help="pretrained weights: .safetensors or a weights-only torch file (a state dict)",
)
@click.option(
    "--class-list",
    type=existing,
    default=None,
    help="the checkpoint's class order, one name per line; checked against the dataset's",
)
@click.option("--out", required=True, type=output, help="teacher artifact to write (.h5)")
@_runtime_options
def import_teacher_cmd(data, info, arch, checkpoint, class_list, out, device, threads):
    """Use pretrained weights as a teacher instead of training one.

    Checks class count and order against the dataset, records the checkpoint's accuracy on the
    dataset's test split, and writes the same teacher artifact as train-teacher.
    """
    from .dataset_spec import DatasetSpec
    from .teacher import import_teacher

    import_teacher(DatasetSpec.parse(data), arch, checkpoint, out, device, threads, info, class_list)


@main.command("fetch-pretrained")
@click.option(
    "--model",
    "name",
    required=True,
    metavar="NAME",
    help="timm model name with or without a pretrained tag, e.g. resnet18.a1_in1k (resnet18: timm's default tag)",
)
@click.option("--out", required=True, type=output, help="weights to write (.safetensors)")
@click.option("--verbose", is_flag=True, help="debug logging")
def fetch_pretrained_cmd(name, out, verbose):
    """Save timm's pretrained weights for NAME as a safetensors state dict, for import-teacher.

    \b
    Runs timm.create_model(NAME, pretrained=True): huggingface_hub downloads the weights or
    reads them from its local cache. Where it looks is its environment:
      HF_HUB_OFFLINE=1   cache only, never the network
      HF_HUB_CACHE       the cache folder (default: $HF_HOME/hub, HF_HOME default ~/.cache/huggingface)
    The file's metadata names the timm model, its hub id, tag and revision, and the mean/std the
    weights expect. The workflow runs this on the submitting node (compute nodes often have no
    network) for `checkpoint: timm:NAME` in teachers.pretrained.
    """
    from .hub import fetch_pretrained
    from .runtime import setup_logging

    setup_logging(verbose)
    fetch_pretrained(name, out)


@main.command("extract-stats")
@click.option("--teacher", required=True, type=existing, help="teacher artifact (.h5)")
@_data_option
@click.option("--seed", type=int, default=0, help="with --views: seed of the views")
@click.option("--out", required=True, type=output, help="statistics artifact to write (.h5)")
@_hparam_options(StatsParams)
@_resume_options("stats", 1000, "batches")
@_runtime_options
def extract_stats_cmd(teacher, data, seed, out, checkpoints, device, threads, **kw):
    """Mean and full covariance of every BatchNorm input of TEACHER over the real training set."""
    from .artifacts.teacher import load_teacher
    from .dataset_spec import DatasetSpec
    from .stats import run_extract_stats

    p = _take(StatsParams, kw)
    run_extract_stats(
        load_teacher(teacher, device),
        DatasetSpec.parse(data),
        p.pooling,
        p.batch_size,
        out,
        device,
        threads,
        p.views,
        p.crop_scale_min,
        seed,
        checkpoints,
    )


@main.command("distill")
@click.option(
    "--teacher", "teachers", required=True, multiple=True, type=existing, help="teacher artifact; repeat for several"
)
@click.option(
    "--stats", "stats", multiple=True, type=existing, help="d3s: statistics artifact of each --teacher, same order"
)
@click.option(
    "--method",
    type=click.Choice(synthesising_methods()),
    default="d3s",
    help="; ".join(f"{m}: {get_method(m).description}" for m in synthesising_methods()),
)
@click.option(
    "--shard",
    "shard",
    required=True,
    metavar="SHARD",
    help="which images: i<first>-<end>_c<classes> IPC indices of classes 'all' or <first>-<end>, e.g. "
    "i0-10_call (IPC 10 of every class), i5-10_c0-100 (IPC indices 5..9 of classes 0..99)",
)
@click.option("--seed", type=int, default=0, help="seed for initial noise and augmentation")
@click.option("--data", default=None, metavar="SPEC", help="dataset spec (as train-teacher's); needed by --init real")
@click.option(
    "--init-images",
    type=existing,
    default=None,
    help="images artifact of a herding / kcenter selection (select-real); needed by --init herding|kcenter",
)
@click.option("--out", required=True, type=output, help="images artifact to write (.h5)")
@_hparam_options(DistillParams)
@_resume_options("distill", 500, "optimisation steps")
@_runtime_options
def distill_cmd(teachers, stats, method, shard, seed, data, init_images, out, checkpoints, device, threads, **kw):
    """Synthesise the images of one SHARD (IPC indices x classes) with the D3S objective (or --method's).

    Minimises the per-layer Gaussian KL between real and synthetic BatchNorm-input statistics
    plus cross-entropy; writes uint8 images, labels and the loss curve.
    """
    from .artifacts.images import save_synthetic
    from .artifacts.stats import load_stats, stats_pooling
    from .artifacts.teacher import load_teachers
    from .baselines import initial_images
    from .distill import distill
    from .shard import Shard

    shard = Shard.parse(shard)
    needs_stats = get_method(method).needs_stats
    if needs_stats and len(teachers) != len(stats):
        raise D3SError(
            f"distill: {len(teachers)} --teacher but {len(stats)} --stats; give one statistics file per teacher"
        )
    loaded = load_teachers(list(teachers), device)
    layer_stats = [load_stats(s, t) for s, t in zip(stats, loaded)] if needs_stats else None
    pooling = stats_pooling(list(stats)) if needs_stats else "positions"
    params = _take(DistillParams, kw)
    checkpoint = checkpoints.checkpointer(
        {
            "stage": "distill",
            "method": method,
            "params": dataclasses.asdict(params),
            "pooling": pooling,
            "seed": seed,
            "teachers": [t.weights_sha256 for t in loaded],
            "classes": loaded[0].classes,
            "shard": str(shard),
        }
    )
    start_pixels = initial_images(params.init, loaded, shard, seed, data, init_images)
    result = distill(loaded, layer_stats, pooling, shard, params, seed, device, method, checkpoint, start_pixels)
    result.inputs["stats"] = list(stats)
    save_synthetic(out, result)
    checkpoint.clear()


@main.command("select-real")
@_data_option
@click.option(
    "--teacher",
    "teachers",
    required=True,
    multiple=True,
    type=existing,
    help="teacher artifact(s) the set is used with (normalisation and class order)",
)
@click.option("--ipc", type=int, required=True, help="real images per class")
@click.option(
    "--selection",
    type=click.Choice(["random", "herding", "kcenter"]),
    default="random",
    show_default=True,
    help="random: uniform per class with --seed; herding: the picks whose feature mean tracks the class "
    "mean; kcenter: k-center greedy (farthest first); both on the teachers' penultimate features",
)
@click.option("--seed", type=int, default=0, help="seed of the random choice")
@click.option("--out", required=True, type=output, help="images artifact to write (.h5)")
@_runtime_options
def select_real_cmd(data, teachers, ipc, selection, seed, out, device, threads):
    """Real-image baselines: IPC training images per class, chosen at random or as a coreset.

    Greedy coresets are nested like the random picks: IPC 10's set extends IPC 1's. Writes the
    same images artifact as distill/merge, so relabel and evaluate treat it alike.
    """
    from .artifacts.images import save_synthetic
    from .artifacts.teacher import load_teachers
    from .baselines import select_real
    from .dataset_spec import DatasetSpec

    save_synthetic(
        out,
        select_real(
            DatasetSpec.parse(data), load_teachers(list(teachers), device), ipc, seed, selection, device, threads
        ),
    )


@main.command("merge")
@click.option("--shard", "shards", required=True, multiple=True, type=existing, help="shard images artifact; repeat")
@click.option("--ipc", type=int, default=None, help="expected images per class (checks the shards cover 0..IPC-1)")
@click.option("--out", required=True, type=output, help="merged images artifact to write (.h5)")
def merge_cmd(shards, ipc, out):
    """Join distillation shards (disjoint blocks of IPC indices x classes of one run) into one images artifact."""
    from .artifacts.images import merge_synthetic_to

    merge_synthetic_to(out, list(shards), ipc)


@main.command("relabel")
@click.option("--images", required=True, type=existing, help="images artifact (.h5)")
@click.option(
    "--teacher",
    "teachers",
    required=True,
    multiple=True,
    type=existing,
    help="teacher artifact; repeat to average several",
)
@click.option("--seed", type=int, default=0, help="seed of the views")
@click.option("--out", required=True, type=output, help="soft-label artifact to write (.h5)")
@_hparam_options(RelabelParams)
@_resume_options("relabel", 10, "label epochs (whole rounds of one epoch per process)")
@_runtime_options
def relabel_cmd(images, teachers, seed, out, checkpoints, device, threads, **kw):
    """Soft labels per (epoch, image): a seeded crop/flip view and the teachers' mean logits (fp16)."""
    from .artifacts.images import load_synthetic
    from .artifacts.teacher import load_teachers
    from .relabel import generate_soft_labels

    generate_soft_labels(
        load_teachers(list(teachers), device),
        load_synthetic(images),
        images,
        _take(RelabelParams, kw),
        seed,
        out,
        device,
        checkpoints,
    )


def _student_options(fn):
    """--student, --seed (repeatable), --dataset-name, --variant, --out (one per seed): what a student run is."""
    for option in reversed(
        [
            click.option("--student", required=True, help="student architecture (built-in or timm name)"),
            click.option(
                "--seed",
                "seeds",
                type=int,
                multiple=True,
                default=(0,),
                help="seed of the student's initialisation and batch order; repeat to train one student per seed, "
                "one after another (one --out each)",
            ),
            click.option("--dataset-name", default=None, help="name recorded in the result (default: the spec's name)"),
            click.option(
                "--variant",
                default="default",
                show_default=True,
                help="name of the sweep variant these settings are, recorded in the result (the summary groups by it)",
            ),
            click.option(
                "--out",
                "outs",
                required=True,
                multiple=True,
                type=output,
                help="result file to write (.json); one per --seed, in the same order",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _train_students(run, seeds, outs, checkpoints, device, threads, meta: dict) -> None:
    """Call `run(seed, out, device, threads, meta=, checkpoints=)` for each student a command trains, one after
    another; with several seeds each gets a checkpoint folder of its own."""
    if len(seeds) != len(outs):
        raise D3SError(f"{len(seeds)} --seed but {len(outs)} --out: give one result file per seed")
    for seed, out in zip(seeds, outs):
        plan = checkpoints.for_seed(seed) if len(seeds) > 1 else checkpoints
        run(seed, out, device, threads, meta=meta, checkpoints=plan)


@main.command("evaluate")
@click.option("--images", required=True, type=existing, help="images artifact (.h5)")
@click.option("--labels", type=existing, default=None, help="soft-label artifact (.h5); needed for --label-mode soft")
@_data_option
@_student_options
@_hparam_options(EvalParams)
@_resume_options("evaluate", 50, "epochs")
@_runtime_options
def evaluate_cmd(images, labels, data, student, seeds, dataset_name, variant, outs, checkpoints, device, threads, **kw):
    """Train a student from scratch on the distilled set; report final-epoch top-1/top-5 on the real test set."""
    from .artifacts.images import load_synthetic
    from .dataset_spec import DatasetSpec
    from .evaluate import run_evaluate

    spec, params = DatasetSpec.parse(data), _take(EvalParams, kw)
    run = functools.partial(run_evaluate, load_synthetic(images), images, labels, spec, student, params)
    _train_students(
        run, seeds, outs, checkpoints, device, threads, {"dataset": dataset_name or spec.name, "variant": variant}
    )


@main.command("evaluate-full")
@_data_option
@click.option(
    "--teacher",
    "teachers",
    required=True,
    multiple=True,
    type=existing,
    help="teacher artifact(s): normalisation, and online soft labels in soft mode",
)
@_student_options
@_hparam_options(EvalParams)
@_resume_options("evaluate_full", 0, "epochs")
@_runtime_options
def evaluate_full_cmd(data, teachers, student, seeds, dataset_name, variant, outs, checkpoints, device, threads, **kw):
    """The 'full' upper bound: a student trained on the whole real training set (FULL_EPOCHS epochs).

    Soft mode uses the teachers' mean logits on each augmented batch (online); hard mode the labels.
    """
    from .artifacts.teacher import load_teachers
    from .dataset_spec import DatasetSpec
    from .evaluate import run_evaluate_full

    spec, params = DatasetSpec.parse(data), _take(EvalParams, kw)
    run = functools.partial(run_evaluate_full, load_teachers(list(teachers), device), spec, student, params)
    _train_students(
        run, seeds, outs, checkpoints, device, threads, {"dataset": dataset_name or spec.name, "variant": variant}
    )


@main.command("summarize")
@click.option("--result", "results", required=True, multiple=True, type=existing, help="result JSON; repeat")
@click.option("--teacher", "teachers", multiple=True, type=existing, help="teacher artifact to list; repeat")
@click.option("--dataset", required=True, help="dataset name for the table")
@click.option(
    "--select-by",
    default=None,
    help="student whose mean validation top-1 chooses each sweep variant (default: the first, by name)",
)
@click.option("--tsv", required=True, type=output, help="table to write (TSV)")
@click.option("--markdown", required=True, type=output, help="table to write (Markdown)")
@click.option("--sweep", "sweep_tsv", type=output, default=None, help="table of every variant to write (TSV)")
def summarize_cmd(results, teachers, dataset, select_by, tsv, markdown, sweep_tsv):
    """Per (method, IPC, label mode, student): the validation-chosen variant's test accuracy, IOR, HLR, LRS.

    Variants of a sweep are chosen per (method, IPC, label mode) on mean validation top-1 only;
    --sweep lists every variant with its validation and test accuracy.
    """
    from .summary import summarize, write_tables

    rows, sweep_rows = summarize(list(results), list(teachers), dataset, select_by)
    write_tables(rows, tsv, markdown, list(teachers), sweep_rows, sweep_tsv)
    click.echo(Path(markdown).read_text())


@main.command("export")
@click.option("--images", required=True, type=existing, help="images artifact (.h5)")
@click.option(
    "--labels", type=existing, default=None, help="soft-label artifact (.h5); ddranking writes labels.pt from it"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["folders", "sre2l", "ddranking"]),
    default="folders",
    help="folders: <index>_<class>/<ipc>.png; sre2l: new<CCC>/class<CCC>_id<III>.png (SRe2L/CDA); "
    "ddranking: images.pt (normalised, class-major), labels.pt, hard_labels.pt for DD-Ranking",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="folder to create (must not exist)")
def export_cmd(images, labels, fmt, out):
    """Write a distilled set in a layout other tools read; pixels are exact (PNG, or float tensors).

    Images go class-major (class 0's IPC images, then class 1's), classes in the artifact's order.
    """
    from .artifacts.images import load_synthetic
    from .export import export
    from .runtime import setup_logging

    setup_logging()
    path = export(load_synthetic(images), images, fmt, out, labels)
    click.echo(f"wrote {path}")


@main.command("plot-accuracy")
@click.option("--summary", required=True, type=existing, help="summary table (TSV) from summarize")
@click.option("--out", required=True, type=output, help="figure to write (.png or .svg)")
def plot_accuracy_cmd(summary, out):
    """Student top-1 against IPC, one line per method, with the full-data and teacher references."""
    from .plots import plot_accuracy

    plot_accuracy(summary, out)


@main.command("plot-losses")
@click.option("--images", "images", required=True, multiple=True, type=existing, help="images artifact; repeat")
@click.option(
    "--summary",
    type=existing,
    default=None,
    help="summary.tsv: of several distilled sets per method and IPC, draw the one it reports",
)
@click.option("--out", required=True, type=output, help="figure to write (.png or .svg)")
def plot_losses_cmd(images, summary, out):
    """Distillation loss curves stored in the images artifacts (one set per method and IPC)."""
    from .plots import plot_losses
    from .summary import reported_sets

    drawn = reported_sets(list(images), summary)
    plot_losses(drawn, out)
    for path in drawn:
        click.echo(f"drew the loss curves of {path}")


@main.command("plot-images")
@click.option(
    "--images",
    required=True,
    multiple=True,
    type=existing,
    help="images artifact (.h5); repeat for the sweep variants of one method and IPC",
)
@click.option(
    "--summary", type=existing, default=None, help="summary.tsv: of several distilled sets, draw the one it reports"
)
@click.option("--out", required=True, type=output, help="figure to write (.png or .svg)")
@click.option("--max-classes", type=int, default=20, help="rows to show")
@click.option("--max-ipc", type=int, default=10, help="columns to show")
def plot_images_cmd(images, summary, out, max_classes, max_ipc):
    """A grid of the distilled images: one row per class, one column per IPC index."""
    from .plots import plot_images
    from .summary import reported_sets

    drawn = reported_sets(list(images), summary)
    if len(drawn) != 1:
        raise D3SError(f"plot-images draws one method and IPC; the images given are {len(drawn)}: " + ", ".join(drawn))
    plot_images(drawn[0], out, max_classes, max_ipc)
    click.echo(f"drew {drawn[0]}")


if __name__ == "__main__":
    sys.exit(main())
