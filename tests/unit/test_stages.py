"""Each `d3s` stage on tiny inputs: what it writes, and that the artifacts describe themselves."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from d3s.artifacts.images import load_synthetic
from d3s.artifacts.labels import SoftLabelStore
from d3s.artifacts.stats import load_stats
from d3s.artifacts.teacher import load_teacher
from d3s.transforms import apply_views

from ..conftest import DIGITS, FAST, run_cli

DIGIT_CLASSES = [str(i) for i in range(10)]


def test_help_lists_every_stage():
    out = run_cli("--help").output
    for stage in (
        "dataset-info",
        "train-teacher",
        "import-teacher",
        "extract-stats",
        "distill",
        "merge",
        "relabel",
        "evaluate",
        "summarize",
    ):
        assert stage in out
    distill_help = run_cli("distill", "--help").output
    assert "--ridge" in distill_help and "--shard" in distill_help and "[default: 1000; x>0]" in distill_help


def test_teacher_artifact_is_self_describing(tiny):
    with h5py.File(tiny["teacher"]) as f:
        assert f.attrs["d3s_kind"] == "teacher"
        assert list(f.attrs["classes"]) == DIGIT_CLASSES
        assert int(f.attrs["seed"]) == 0
        assert json.loads(f.attrs["config"])["epochs"] == 3
        assert f.attrs["code_version"].startswith("0.")
        assert 0.1 < f.attrs["test_top1"] <= 1.0  # 3 epochs on digits is well above chance
        assert len(f["train_loss"]) == 3
    t = load_teacher(tiny["teacher"])
    assert t.arch == "convnet3_w32" and t.channels == 1 and t.image_size == 8
    assert not any(p.requires_grad for p in t.model.parameters())


def test_stats_match_a_direct_computation(tiny):
    """The streamed statistics equal mean/cov of the hooked BN inputs over the whole training set."""
    from d3s.bn_inputs import BNInputRecorder
    from d3s.data import load_dataset
    from d3s.dataset_spec import DatasetSpec
    from d3s.gaussian import batch_moments, feature_samples

    teacher = load_teacher(tiny["teacher"])
    layers = load_stats(tiny["stats"], teacher)
    data = load_dataset(DatasetSpec.parse(DIGITS))
    x = teacher.normalizer("cpu").from_uint8(data.train.images)
    with BNInputRecorder(teacher.model) as rec, torch.no_grad():
        teacher.model(x)
        direct = [batch_moments(feature_samples(f.double(), "positions")) for f in rec.inputs]
        rec_shapes = [f.shape for f in rec.inputs]
    assert [s.name for s in layers] == rec.names
    for s, (mean, cov), feats in zip(layers, direct, rec_shapes):
        assert s.count == feats[0] * feats[2] * feats[3]  # every (image, h, w) position is a sample
        torch.testing.assert_close(s.mean, mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.cov, cov, rtol=1e-4, atol=1e-5)
    with h5py.File(tiny["stats"]) as f:
        assert f.attrs["teacher_sha256"] == teacher.weights_sha256
        assert f.attrs["pooling"] == "positions" and f.attrs["hook"] == "bn_input"


def test_stats_through_augmented_views(tiny, tmp_path):
    """--views k: k crop views per image; full-image views without flips are the plain statistics."""
    teacher = load_teacher(tiny["teacher"])
    plain = load_stats(tiny["stats"], teacher)
    identity, cropped = tmp_path / "identity.h5", tmp_path / "cropped.h5"
    run_cli(
        "extract-stats",
        "--teacher",
        tiny["teacher"],
        "--data",
        DIGITS,
        "--views",
        "1",
        "--crop-scale-min",
        "1",
        "--out",
        identity,
        *FAST,
    )
    run_cli(
        "extract-stats",
        "--teacher",
        tiny["teacher"],
        "--data",
        DIGITS,
        "--views",
        "2",
        "--crop-scale-min",
        "0.3",
        "--seed",
        "1",
        "--out",
        cropped,
        *FAST,
    )
    for p, s in zip(plain, load_stats(identity, teacher)):
        # scale 1 may still draw a non-square box at aspect 3/4..4/3, clamped to the image: near, not equal
        assert s.count == p.count
        assert (s.mean - p.mean).abs().max() < 0.25 * p.cov.diagonal().sqrt().mean()
    for p, s in zip(plain, load_stats(cropped, teacher)):
        assert s.count == 2 * p.count  # two views of every image
        assert not torch.allclose(s.cov, p.cov, rtol=1e-2)
    with h5py.File(cropped) as f:
        assert json.loads(f.attrs["config"])["views"] == 2 and int(f.attrs["seed"]) == 1


def test_merged_images_cover_every_class_and_ipc(tiny):
    s = load_synthetic(tiny["images"])
    assert s.images.dtype == np.uint8 and s.images.shape == (20, 8, 8, 1)
    assert s.classes == DIGIT_CLASSES
    # ordered by (ipc index, class), whatever order the shards were given in
    assert s.ipc_index.tolist() == [0] * 10 + [1] * 10
    assert s.labels.tolist() == list(range(10)) * 2
    assert set(s.loss_curves) == {"i0-1_call", "i1-2_call"}
    assert all(len(c["total"]) == 15 for c in s.loss_curves.values())
    with h5py.File(tiny["images"]) as f:
        assert f.attrs["d3s_kind"] == "images" and f.attrs["ipc"] == 2
        assert json.loads(f.attrs["config"])["iterations"] == 15


def test_distillation_lowers_the_loss(tiny):
    curves = load_synthetic(tiny["shard0"]).loss_curves["i0-1_call"]
    assert curves["total"][-3:].mean() < curves["total"][:3].mean()


def test_soft_labels_replay_the_stored_views(tiny):
    """The stored logits are the teacher's output on exactly the stored view of each image."""
    s = load_synthetic(tiny["images"])
    teacher = load_teacher(tiny["teacher"])
    store = SoftLabelStore(tiny["labels"], s, str(tiny["images"]))
    assert store.epochs == 3
    x = teacher.normalizer("cpu").from_uint8(torch.from_numpy(s.images).permute(0, 3, 1, 2))
    for epoch in (0, 2):
        boxes, flips, logits = store.epoch(epoch)
        with torch.no_grad():
            expected = teacher.model(apply_views(x, boxes, flips, 8))
        torch.testing.assert_close(logits[:], expected, rtol=2e-3, atol=2e-2)  # stored as fp16
    b0, _, _ = store.epoch(0)
    b1, _, _ = store.epoch(1)
    assert not torch.equal(b0, b1)  # a fresh view per epoch
    torch.testing.assert_close(store.epoch(3)[0], b0)  # cycled past the last epoch
    store.close()


def test_result_records_the_protocol(tiny):
    r = json.loads(tiny["result"].read_text())
    assert r["method"] == "d3s" and r["ipc"] == 2 and r["student"] == "convnet3_w32"
    assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    assert r["protocol"]["epochs"] == 3 and r["protocol"]["label_mode"] == "soft"
    assert r["protocol"]["reported"] == "final epoch"
    assert r["protocol"]["distill"]["iterations"] == 15
    assert 355 <= r["n_test"] <= 365  # 20% of each digits class


def test_seeds_in_one_process_give_the_results_of_one_process_each(tiny, tmp_path):
    """evaluate --seed 1 --seed 0 (the workflow's seeds_in_one_job) = one run per seed, to the bit."""
    student = [
        "--images",
        tiny["images"],
        "--labels",
        tiny["labels"],
        "--data",
        DIGITS,
        "--student",
        "convnet3_w32",
        "--epochs",
        "3",
        *FAST,
    ]
    together = [tmp_path / "a1.json", tmp_path / "a0.json"]
    run_cli("evaluate", *student, "--seed", "1", "--seed", "0", "--out", together[0], "--out", together[1])
    alone = tmp_path / "b1.json"
    run_cli("evaluate", *student, "--seed", "1", "--out", alone)
    first, second, single = (json.loads(p.read_text()) for p in (*together, alone))
    assert (first["seed"], second["seed"]) == (1, 0)
    for key in ("top1", "top5", "val_top1", "protocol"):
        assert first[key] == single[key], key
    assert second["top1"] == json.loads(tiny["result"].read_text())["top1"]  # seed 0, as the fixture's run
    mismatch = run_cli("evaluate", *student, "--seed", "1", "--seed", "2", "--out", alone, expect_ok=False)
    assert mismatch.exit_code != 0 and "2 --seed but 1 --out" in mismatch.output


def test_summarize_tables(tiny, tmp_path):
    second = tmp_path / "r1.json"
    r = json.loads(tiny["result"].read_text())
    second.write_text(json.dumps({**r, "seed": 1, "top1": r["top1"] + 0.1}))
    run_cli(
        "summarize",
        "--result",
        tiny["result"],
        "--result",
        second,
        "--teacher",
        tiny["teacher"],
        "--dataset",
        "digits",
        "--tsv",
        tmp_path / "s.tsv",
        "--markdown",
        tmp_path / "s.md",
    )
    header, row = (tmp_path / "s.tsv").read_text().splitlines()
    cells = dict(zip(header.split("\t"), row.split("\t")))
    assert cells["seeds"] == "0,1" and cells["ipc"] == "2"
    assert abs(float(cells["top1_mean"]) - 100 * (r["top1"] + 0.05)) < 0.01
    assert abs(float(cells["top1_std"]) - 100 * np.std([r["top1"], r["top1"] + 0.1], ddof=1)) < 0.01
    assert "± " in (tmp_path / "s.md").read_text()
    # the two seeds share a protocol; a different temperature would be a different, incomparable protocol
    assert len(cells["protocol"]) == 10
    third = tmp_path / "r2.json"
    third.write_text(json.dumps({**r, "seed": 2, "protocol": {**r["protocol"], "temperature": 9.0}}))
    run_cli(
        "summarize",
        "--result",
        tiny["result"],
        "--result",
        third,
        "--dataset",
        "digits",
        "--tsv",
        tmp_path / "t.tsv",
        "--markdown",
        tmp_path / "t.md",
    )
    mixed = dict(zip(header.split("\t"), (tmp_path / "t.tsv").read_text().splitlines()[1].split("\t")))
    assert len(mixed["protocol"].split(",")) == 2


def test_same_seed_same_artifacts(tiny, tmp_path):
    """On the CPU a stage rerun with the same seed reproduces its artifact's content exactly."""
    again = tmp_path / "shard0.h5"
    run_cli(
        "distill",
        "--teacher",
        tiny["teacher"],
        "--stats",
        tiny["stats"],
        "--shard",
        "i0-1_call",
        "--iterations",
        "15",
        "--out",
        again,
        "--device",
        "cpu",
        "--threads",
        "2",
    )
    a, b = load_synthetic(tiny["shard0"]), load_synthetic(again)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.loss_curves["i0-1_call"]["total"], b.loss_curves["i0-1_call"]["total"])
    teacher2 = tmp_path / "teacher.h5"
    run_cli(
        "train-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet3_w32",
        "--seed",
        "0",
        "--epochs",
        "3",
        "--out",
        teacher2,
        "--device",
        "cpu",
        "--threads",
        "2",
    )
    assert load_teacher(teacher2).weights_sha256 == load_teacher(tiny["teacher"]).weights_sha256


def test_shard_larger_than_a_minibatch_uses_moving_statistics(tiny, tmp_path):
    """20 images in minibatches of 7: three blocks, optimised in turn with whole-set EMA statistics."""
    out = tmp_path / "blocks.h5"
    run_cli(
        "distill",
        "--teacher",
        tiny["teacher"],
        "--stats",
        tiny["stats"],
        "--shard",
        "i0-2_call",
        "--batch-size",
        "7",
        "--iterations",
        "10",
        "--out",
        out,
        "--device",
        "cpu",
        "--threads",
        "2",
    )
    s = load_synthetic(out)
    assert s.images.shape[0] == 20 and s.labels.tolist() == list(range(10)) * 2
    curve = s.loss_curves["i0-2_call"]["total"]
    assert np.isfinite(curve).all() and curve[-1] < curve[0]


def test_several_teachers_mean_and_round_robin(tiny, tmp_path):
    """K teachers: distillation averages them (or takes turns) and relabel averages their logits."""
    second_t, second_s = tmp_path / "t1.h5", tmp_path / "s1.h5"
    run_cli(
        "train-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet3_w32",
        "--seed",
        "1",
        "--epochs",
        "2",
        "--out",
        second_t,
        "--device",
        "cpu",
        "--threads",
        "2",
    )
    run_cli("extract-stats", "--teacher", second_t, "--data", DIGITS, "--out", second_s, "--device", "cpu")
    teachers = ["--teacher", tiny["teacher"], "--teacher", second_t]
    stats = ["--stats", tiny["stats"], "--stats", second_s]
    for mode in ("mean", "round_robin"):
        out = tmp_path / f"{mode}.h5"
        run_cli(
            "distill",
            *teachers,
            *stats,
            "--shard",
            "i0-1_call",
            "--iterations",
            "4",
            "--teacher-mode",
            mode,
            "--out",
            out,
            "--device",
            "cpu",
        )
        s = load_synthetic(out)
        assert len(s.teachers) == 2 and s.config["teacher_mode"] == mode
    labels = tmp_path / "labels.h5"
    run_cli("relabel", "--images", out, *teachers, "--epochs", "1", "--out", labels, "--device", "cpu")
    t0, t1 = load_teacher(tiny["teacher"]), load_teacher(second_t)
    s = load_synthetic(out)
    store = SoftLabelStore(labels, s, str(out))
    boxes, flips, logits = store.epoch(0)
    x = apply_views(t0.normalizer("cpu").from_uint8(torch.from_numpy(s.images).permute(0, 3, 1, 2)), boxes, flips, 8)
    with torch.no_grad():
        expected = (t0.model(x) + t1.model(x)) / 2
    torch.testing.assert_close(logits[:], expected, rtol=2e-3, atol=2e-2)
    store.close()
    mismatched = run_cli(
        "distill",
        *teachers,
        "--stats",
        tiny["stats"],
        "--shard",
        "i0-1_call",
        "--out",
        tmp_path / "x.h5",
        expect_ok=False,
    )
    assert mismatched.exit_code != 0 and "2 --teacher but 1 --stats" in mismatched.output


def test_class_block_shards_merge_into_the_full_set(tiny, tmp_path):
    """Shards may split classes too (ImageNet-21K scale): 2 IPC x 10 classes as 4 blocks."""
    shards = []
    for (a, b), (c0, c1) in [((0, 2), (0, 4)), ((0, 1), (4, 10)), ((1, 2), (4, 7)), ((1, 2), (7, 10))]:
        out = tmp_path / f"i{a}-{b}_c{c0}-{c1}.h5"
        run_cli(
            "distill",
            "--teacher",
            tiny["teacher"],
            "--stats",
            tiny["stats"],
            "--shard",
            f"i{a}-{b}_c{c0}-{c1}",
            "--iterations",
            "3",
            "--out",
            out,
            "--device",
            "cpu",
        )
        s = load_synthetic(out)
        assert sorted(set(s.labels.tolist())) == list(range(c0, c1))
        shards += ["--shard", out]
    merged = tmp_path / "merged.h5"
    run_cli("merge", *shards, "--ipc", "2", "--out", merged)
    m = load_synthetic(merged)
    assert m.ipc_index.tolist() == [0] * 10 + [1] * 10 and m.labels.tolist() == list(range(10)) * 2
    assert set(m.loss_curves) == {"i0-2_c0-4", "i0-1_c4-10", "i1-2_c4-7", "i1-2_c7-10"}


def test_teachers_of_different_architectures_and_diagonal_ablation(tiny, tmp_path):
    """K teachers may differ in depth (their BN layer lists differ); the diagonal ablation runs with several blocks."""
    deeper_t, deeper_s = tmp_path / "c4.h5", tmp_path / "c4s.h5"
    run_cli(
        "train-teacher",
        "--data",
        DIGITS,
        "--arch",
        "convnet4_w32",
        "--epochs",
        "1",
        "--out",
        deeper_t,
        "--device",
        "cpu",
    )
    run_cli("extract-stats", "--teacher", deeper_t, "--data", DIGITS, "--out", deeper_s, "--device", "cpu")
    out = tmp_path / "mixed.h5"
    run_cli(
        "distill",
        "--teacher",
        tiny["teacher"],
        "--teacher",
        deeper_t,
        "--stats",
        tiny["stats"],
        "--stats",
        deeper_s,
        "--shard",
        "i0-2_call",
        "--batch-size",
        "7",
        "--iterations",
        "3",
        "--covariance",
        "diagonal",
        "--out",
        out,
        "--device",
        "cpu",
    )
    s = load_synthetic(out)
    assert len(s.teachers) == 2 and s.config["covariance"] == "diagonal"
    assert np.isfinite(s.loss_curves["i0-2_call"]["match"]).all()


def test_bf16_training_learns_and_is_recorded(tiny, tmp_path):
    """bf16 autocast changes the arithmetic (so the weights), not whether the models learn."""
    fp32_t, bf16_t = tmp_path / "fp32.h5", tmp_path / "bf16.h5"
    for out, precision in ((fp32_t, "fp32"), (bf16_t, "bf16")):
        run_cli(
            "train-teacher",
            "--data",
            DIGITS,
            "--arch",
            "convnet3_w32",
            "--seed",
            "0",
            "--epochs",
            "3",
            "--precision",
            precision,
            "--out",
            out,
            *FAST,
        )
    with h5py.File(fp32_t) as a, h5py.File(bf16_t) as b:
        assert json.loads(b.attrs["config"])["precision"] == "bf16"
        assert b.attrs["test_top1"] > 0.8 and abs(a.attrs["test_top1"] - b.attrs["test_top1"]) < 0.1
        name = "state_dict/features.0.weight"
        assert not np.array_equal(a[name][()], b[name][()])
    result = tmp_path / "bf16.json"
    run_cli(
        "evaluate",
        "--images",
        tiny["images"],
        "--labels",
        tiny["labels"],
        "--data",
        DIGITS,
        "--student",
        "convnet3_w32",
        "--epochs",
        "3",
        "--precision",
        "bf16",
        "--out",
        result,
        *FAST,
    )
    r = json.loads(result.read_text())
    assert r["protocol"]["precision"] == "bf16" and r["top1"] > 0.1
    bad = run_cli(
        "evaluate",
        "--images",
        tiny["images"],
        "--labels",
        tiny["labels"],
        "--data",
        DIGITS,
        "--student",
        "convnet3_w32",
        "--precision",
        "fp8",
        "--out",
        tmp_path / "x.json",
        expect_ok=False,
    )
    assert bad.exit_code != 0 and "fp8" in bad.output


def test_real_init_starts_from_the_random_baselines_images(tiny, tmp_path):
    """--init real with a zero learning rate returns its starting images: the random picks of the same slots."""
    picked, started = tmp_path / "random.h5", tmp_path / "start.h5"
    run_cli("select-real", "--data", DIGITS, "--teacher", tiny["teacher"], "--ipc", "2", "--seed", "3", "--out", picked)
    run_cli(
        "distill",
        "--teacher",
        tiny["teacher"],
        "--stats",
        tiny["stats"],
        "--shard",
        "i1-2_call",
        "--init",
        "real",
        "--data",
        DIGITS,
        "--lr",
        "1e-9",
        "--iterations",
        "2",
        "--seed",
        "3",
        "--out",
        started,
        *FAST,
    )
    random_set, start = load_synthetic(picked), load_synthetic(started)
    second = random_set.ipc_index == 1  # the shard covers IPC index 1 only
    np.testing.assert_array_equal(start.images, random_set.images[second])
    np.testing.assert_array_equal(start.labels, random_set.labels[second])
    assert json.loads(h5py.File(started).attrs["config"])["init"] == "real"
    missing = run_cli(
        "distill",
        "--teacher",
        tiny["teacher"],
        "--stats",
        tiny["stats"],
        "--shard",
        "i0-1_call",
        "--init",
        "real",
        "--out",
        tmp_path / "x.h5",
        *FAST,
        expect_ok=False,
    )
    assert missing.exit_code != 0 and "--init real needs --data" in missing.output


@pytest.mark.parametrize("arch", ["convnet3_w32", "resnet18_cifar"])
def test_first_layer_moments_through_input_patches_equal_direct(arch):
    """The shortcut (patch moments mapped by the first conv) gives the direct statistics of the first BN input."""
    from d3s.bn_inputs import BNInputRecorder
    from d3s.gaussian import MomentAccumulator
    from d3s.models import build_model
    from d3s.stats import InputConvMoments

    torch.manual_seed(0)
    model = build_model(arch, 10, 3, 16).eval()
    x = torch.randn(8, 3, 16, 16)
    with BNInputRecorder(model) as rec, torch.no_grad():
        first = InputConvMoments.find(model, rec, x, "cpu")
        assert first is not None
        direct = MomentAccumulator(rec.layers[0][1].num_features)
        for batch in x.split(3):
            model(batch)
            direct.update_features(rec.inputs[0], "positions")
            first.update(batch)
    mean, cov, count = first.moments()
    assert count == direct.count
    torch.testing.assert_close(mean, direct.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cov, direct.covariance(), rtol=1e-4, atol=1e-5)


def test_no_shortcut_when_something_sits_between_the_conv_and_the_first_bn():
    from d3s.bn_inputs import BNInputRecorder
    from d3s.stats import InputConvMoments

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    x = torch.randn(2, 3, 8, 8)
    with BNInputRecorder(model) as rec, torch.no_grad():
        assert InputConvMoments.find(model, rec, x, "cpu") is None
