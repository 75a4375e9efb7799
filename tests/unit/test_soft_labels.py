"""Top-k soft labels: the compression keeps the k largest probabilities exactly and the rest's mass."""

from __future__ import annotations

import json

import h5py
import pytest
import torch

from d3s.artifacts.images import load_synthetic
from d3s.artifacts.labels import SoftLabelStore, dense_logits, top_k_logits
from tests.conftest import DIGITS, FAST, run_cli


def test_top_k_keeps_the_largest_probabilities_and_the_rest_of_the_mass():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    k = 5
    values, classes, rest = top_k_logits(logits, k)
    rebuilt = dense_logits(values, classes, rest, 50)
    p, q = logits.softmax(1), rebuilt.softmax(1)
    torch.testing.assert_close(q.gather(1, classes), p.gather(1, classes))
    others = torch.ones_like(p, dtype=torch.bool).scatter_(1, classes, False)
    q_rest = q[others].view(64, 45)
    torch.testing.assert_close(q_rest.sum(1), p[others].view(64, 45).sum(1))  # same mass off the top k
    torch.testing.assert_close(q_rest, q_rest[:, :1].expand_as(q_rest))  # spread evenly
    assert torch.equal(q.argmax(1), p.argmax(1))


def test_top_k_of_all_but_one_class_is_exact():
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(dense_logits(*top_k_logits(logits, 9), 10), logits)


def test_relabel_top_k_stores_k_logits_and_students_train_on_them(tiny, tmp_path):
    labels, result = tmp_path / "labels_top3.h5", tmp_path / "result.json"
    run_cli(
        "relabel",
        "--images",
        tiny["images"],
        "--teacher",
        tiny["teacher"],
        "--epochs",
        "3",
        "--top-k",
        "3",
        "--out",
        labels,
        *FAST,
    )
    with h5py.File(labels) as f, h5py.File(tiny["labels"]) as dense:
        assert f.attrs["top_k"] == 3 and "logits" not in f
        assert f["topk_logits"].shape == (3, 20, 3) and f["topk_classes"].shape == (3, 20, 3)
        assert f["rest_logsumexp"].shape == (3, 20)
        # same seed, same views: the kept logits are the dense file's three largest
        torch.testing.assert_close(
            torch.from_numpy(f["topk_logits"][:]), torch.from_numpy(dense["logits"][:]).topk(3, dim=2).values
        )
    s = load_synthetic(tiny["images"])
    top3, full = SoftLabelStore(labels, s, str(tiny["images"])), SoftLabelStore(tiny["labels"], s, str(tiny["images"]))
    rows = torch.tensor([4, 0, 19])
    _, _, compressed = top3.epoch(1)
    _, _, dense_epoch = full.epoch(1)
    assert compressed[rows].shape == (3, 10) and compressed[rows].dtype == torch.float32
    torch.testing.assert_close(
        compressed[rows].softmax(1).topk(3).values, dense_epoch[rows].softmax(1).topk(3).values, rtol=2e-3, atol=2e-3
    )
    top3.close(), full.close()
    run_cli(
        "evaluate",
        "--images",
        tiny["images"],
        "--labels",
        labels,
        "--data",
        DIGITS,
        "--student",
        "convnet3_w32",
        "--epochs",
        "3",
        "--out",
        result,
        *FAST,
    )
    assert 0.0 <= json.loads(result.read_text())["top1"] <= 1.0


def test_relabel_top_k_at_or_above_the_class_count_stores_dense_labels(tiny, tmp_path):
    labels = tmp_path / "labels.h5"
    run_cli(
        "relabel",
        "--images",
        tiny["images"],
        "--teacher",
        tiny["teacher"],
        "--epochs",
        "1",
        "--top-k",
        "10",
        "--out",
        labels,
        *FAST,
    )
    with h5py.File(labels) as f:
        assert f.attrs["top_k"] == 0 and f["logits"].shape == (1, 20, 10)


@pytest.mark.parametrize("k", ["-1"])
def test_negative_top_k_is_refused(tiny, tmp_path, k):
    out = run_cli(
        "relabel",
        "--images",
        tiny["images"],
        "--teacher",
        tiny["teacher"],
        "--top-k",
        k,
        "--out",
        tmp_path / "x.h5",
        *FAST,
        expect_ok=False,
    )
    assert out.exit_code != 0 and "Invalid value for '--top-k': -1 is not in the range x>=0" in out.output
    assert not (tmp_path / "x.h5").exists()


def test_protocol_hash_counts_a_relabel_setting_at_its_default_as_absent():
    """Results made before `top_k` existed stay comparable with new dense-label results."""
    from d3s.summary import protocol_hash

    relabel = {"epochs": 200, "crop_scale_min": 0.5, "crop_scale_max": 1.0, "batch_size": 256}
    older = {"protocol": {"epochs": 200, "lr": 0.001, "relabel": relabel}}
    dense = {"protocol": {"epochs": 200, "lr": 0.001, "relabel": {**relabel, "top_k": 0}}}
    top5 = {"protocol": {"epochs": 200, "lr": 0.001, "relabel": {**relabel, "top_k": 5}}}
    fewer_epochs = {"protocol": {"epochs": 200, "lr": 0.001, "relabel": {**relabel, "epochs": 100, "top_k": 0}}}
    assert protocol_hash(older) == protocol_hash(dense)
    assert len({protocol_hash(dense), protocol_hash(top5), protocol_hash(fewer_epochs)}) == 3
