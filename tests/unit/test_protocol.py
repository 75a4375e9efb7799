"""The honest protocol's parts: validation split, coresets, sweep variants, selection, metrics, export."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from d3s import sweep
from d3s.coreset import coreset_choice, herding_order, kcenter_order
from d3s.data import load_dataset, validation_indices
from d3s.dataset_spec import DatasetSpec
from d3s.errors import D3SError
from d3s.summary import label_robust_score, reported_sets, select_variants, summarize, write_tables

DIGITS = {"source": "digits", "hflip": False}


# ------------------------------------------------------------------------------------------ validation split


def test_validation_split_is_held_out_per_class_and_seeded():
    spec = DatasetSpec.from_dict({**DIGITS, "val_per_class": 7})
    whole = load_dataset(DatasetSpec.from_dict(DIGITS), splits=("train",))
    data = load_dataset(spec, splits=("train", "val", "test"))
    assert len(data.val) == 70 and len(data.train) + len(data.val) == len(whole.train)
    assert np.bincount(data.val.labels.numpy(), minlength=10).tolist() == [7] * 10
    # disjoint, and together the source's training split; train_index maps back to it
    assert not set(data.val.indices) & set(data.train_index)
    assert sorted([*data.val.indices, *data.train_index]) == list(range(len(whole.train)))
    i = 5
    assert torch.equal(data.train[i][0], whole.train[int(data.train_index[i])][0])
    # a stage that asks only for train gets the same reduced split; another seed holds out other images
    assert len(load_dataset(spec, splits=("train",)).train) == len(data.train)
    other = load_dataset(DatasetSpec.from_dict({**DIGITS, "val_per_class": 7, "split_seed": 1}), splits=("val",))
    assert set(other.val.indices) != set(data.val.indices)


def test_validation_split_too_large_for_a_class_is_an_error():
    labels = np.array([0] * 5 + [1] * 3)
    with pytest.raises(D3SError, match="class 1 has 3 training images; val_per_class 3 would leave none"):
        validation_indices(labels, 2, 3, seed=0)


def test_no_validation_split_by_default():
    data = load_dataset(DatasetSpec.from_dict(DIGITS), splits=("train", "val", "test"))
    assert data.val is None and data.train_index is None


# ------------------------------------------------------------------------------------------ coresets


def _brute_force_herding(f: torch.Tensor, k: int) -> list[int]:
    """The greedy rule spelled out: each step, the candidate that brings the running mean closest to mu."""
    mu, chosen = f.mean(0), []
    for _ in range(k):
        best = min(
            (i for i in range(len(f)) if i not in chosen), key=lambda i: float((f[chosen + [i]].mean(0) - mu).norm())
        )
        chosen.append(best)
    return chosen


def test_herding_is_the_greedy_mean_matching_order():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 6, generator=g, dtype=torch.float64)
    assert herding_order(f, 8).tolist() == _brute_force_herding(f, 8)
    # its picks' mean tracks the class mean better than a random set of the same size does
    picks = herding_order(f, 8)
    gap = (f[picks].mean(0) - f.mean(0)).norm()
    random_gaps = [(f[torch.randperm(40, generator=g)[:8]].mean(0) - f.mean(0)).norm() for _ in range(200)]
    assert gap < np.quantile(random_gaps, 0.05)


def test_kcenter_picks_the_farthest_point_each_step():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(30, 4, generator=g, dtype=torch.float64)
    order = kcenter_order(f, 6).tolist()
    assert order[0] == int((f - f.mean(0)).norm(dim=1).argmin())  # starts nearest the class mean
    for t in range(1, 6):
        nearest = torch.cdist(f, f[order[:t]]).min(1).values
        assert order[t] == int(nearest.argmax())
    assert len(set(order)) == 6


def test_coresets_are_nested_and_per_class():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(60, 5, generator=g)
    labels = torch.arange(60) % 3
    for selection in ("herding", "kcenter"):
        one, four = (coreset_choice(feats, labels, 3, k, selection) for k in (1, 4))
        for c in range(3):
            assert (labels[four[c]] == c).all()
            assert four[c][:1].tolist() == one[c].tolist()
    with pytest.raises(D3SError, match="fewer than IPC 21"):
        coreset_choice(feats, labels, 3, 21, "herding")


# ------------------------------------------------------------------------------------------ sweep variants


def test_variant_names_round_trip_and_skip_the_configured_values():
    base = {"distill": {"lr": 0.1, "iterations": 100}, "relabel": {"epochs": 30}, "evaluate": {"lr": 0.001}}
    config = {
        "d3s": {
            "distill": {"lr": [0.1, 0.25]},
            "evaluate": {"lr": [0.001, 1e-05]},
            "by_ipc": {"10": {"distill": {"lr": [0.05]}}},
        }
    }
    at_one = sweep.variants(config, "d3s", 1, base)
    names = [tuple(sweep.part_name(v[s]) for s in ("distill", "relabel", "evaluate")) for v in at_one]
    assert names == [
        ("default", "default", "default"),
        ("default", "default", "lr=1e-05"),
        ("lr=0.25", "default", "default"),
        ("lr=0.25", "default", "lr=1e-05"),
    ]
    for v in at_one:
        for changes in v.values():
            assert sweep.parse_part(sweep.part_name(changes)) == changes
    # by_ipc replaces that key's values at that IPC only
    assert [v["distill"] for v in sweep.variants(config, "d3s", 10, base)] == [{"lr": 0.05}, {"lr": 0.05}]
    assert sweep.budget(config, "d3s", 1) == 4 and sweep.budget(config, "random", 1) == 1
    assert sweep.variants({}, "random", 1, base) == [{"relabel": {}, "evaluate": {}}]


def test_budgets_must_match_across_methods():
    config = {"d3s": {"distill": {"lr": [0.1, 0.25]}}, "random": {"evaluate": {"lr": [0.001, 0.003]}}}
    sweep.check_budgets(config, ["d3s", "random", "full"], [1, 10])
    with pytest.raises(ValueError, match=r"at IPC 1 the methods have different budgets \(d3s 2, random 2, herding 1"):
        sweep.check_budgets(config, ["d3s", "random", "herding"], [1])
    with pytest.raises(ValueError, match="sweep.random.distill: random has no 'distill' settings"):
        sweep.check_sweep({"random": {"distill": {"lr": [0.1]}}}, ["random"], [1])


# ------------------------------------------------------------------------------------------ selection, metrics


def _result(method, ipc, variant, student, seed, val, test, labels="soft"):
    return {
        "method": method,
        "ipc": ipc,
        "variant": variant,
        "student": student,
        "seed": seed,
        "val_top1": val,
        "top1": test,
        "top5": test,
        "n_images": 10 * (ipc or 0),
        "protocol": {"label_mode": labels},
    }


def test_selection_uses_validation_never_test():
    # variant b is best on test, a on validation: a is chosen, for the other student too
    results = [_result("d3s", 1, "a", s, seed, 0.6, 0.3) for s in ("net1", "net2") for seed in (0, 1)]
    results += [_result("d3s", 1, "b", s, seed, 0.4, 0.9) for s in ("net1", "net2") for seed in (0, 1)]
    chosen, table = select_variants(results, "net1")
    assert chosen == {("d3s", 1, "soft"): "a"}
    assert {(r["variant"], r["student"], r["selected"]) for r in table} == {
        ("a", "net1", "yes"),
        ("a", "net2", "yes"),
        ("b", "net1", "no"),
        ("b", "net2", "no"),
    }
    # the selecting student's validation decides even where the other student disagrees
    results += [_result("d3s", 1, "c", "net1", s, 0.7, 0.1) for s in (0, 1)]
    results += [_result("d3s", 1, "c", "net2", s, 0.0, 0.1) for s in (0, 1)]
    assert select_variants(results, "net1")[0][("d3s", 1, "soft")] == "c"


def test_selection_without_validation_accuracy_is_an_error():
    results = [_result("d3s", 1, v, "net", 0, None, 0.5) for v in ("a", "b")]
    with pytest.raises(D3SError, match="no validation accuracy"):
        select_variants(results, "net")
    assert select_variants(results[:1], "net")[0] == {("d3s", 1, "soft"): "a"}  # one variant: nothing to choose


def test_lrs_is_dd_rankings_formula():
    assert label_robust_score(0.0, 0.0) == pytest.approx(100 * (1 - math.exp(-1)) / (math.e - math.exp(-1)))
    # IOR = +100 points and HLR = -100 points is the best possible: a = 1
    assert label_robust_score(100.0, -100.0) == pytest.approx(100.0)
    assert label_robust_score(-100.0, 100.0) == pytest.approx(0.0)
    for ior, hlr in itertools.product((-20.0, 0.0, 15.0), (-5.0, 0.0, 30.0)):
        a = (0.5 * ior - 0.5 * hlr) / 100
        assert label_robust_score(ior, hlr) == pytest.approx(
            100 * (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))
        )


def test_summary_metrics_from_results(tmp_path):
    paths = []
    accs = {("d3s", "soft"): 0.6, ("d3s", "hard"): 0.3, ("random", "soft"): 0.5, ("random", "hard"): 0.2}
    for (method, labels), acc in accs.items():
        for seed, delta in ((0, -0.01), (1, 0.01)):
            paths.append(_result(method, 1, "v", "net", seed, acc, acc + delta, labels))
    for seed in (0, 1):
        paths.append(_result("full", None, "v", "net", seed, 0.9, 0.8, "hard"))
    files = []
    for i, r in enumerate(paths):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(r))
    rows, _ = summarize([str(p) for p in files], [], "toy")
    by = {(r["method"], r["labels"]): r for r in rows}
    assert by[("d3s", "soft")]["ior"] == pytest.approx(10.0) and by[("d3s", "hard")]["ior"] == pytest.approx(10.0)
    assert by[("d3s", "soft")]["hlr"] == pytest.approx(50.0) and by[("random", "hard")]["hlr"] == pytest.approx(60.0)
    assert by[("d3s", "soft")]["lrs"] == pytest.approx(round(label_robust_score(10.0, 50.0), 2))
    # margin in pooled standard deviations: 10 points over hypot(1.41, 1.41)
    assert by[("d3s", "soft")]["ior_sigmas"] == pytest.approx(
        10 / math.hypot(np.std([59, 61], ddof=1), np.std([49, 51], ddof=1)), abs=0.01
    )
    assert by[("full", "hard")]["ior"] == "" and by[("random", "soft")]["ior"] == 0.0


def test_kcenter_never_repeats_a_pick_among_duplicates():
    f = torch.zeros(5, 3, dtype=torch.float64)  # every distance 0: argmax would return a picked row
    assert sorted(kcenter_order(f, 5).tolist()) == [0, 1, 2, 3, 4]


def test_hard_label_rows_keep_the_set_the_soft_labels_chose():
    """HLR and LRS describe one distilled set: the hard-label choice is among the soft choice's set."""
    results = []
    for seed in (0, 1):
        results += [
            _result("d3s", 1, "a/default/default", "net", seed, 0.6, 0.5),  # soft: set a wins
            _result("d3s", 1, "b/default/default", "net", seed, 0.5, 0.5),
            _result("d3s", 1, "a/hard/default", "net", seed, 0.2, 0.2, "hard"),
            _result("d3s", 1, "a/hard/lr=0.01", "net", seed, 0.3, 0.2, "hard"),
            _result("d3s", 1, "b/hard/default", "net", seed, 0.9, 0.9, "hard"),
        ]  # best, other set
    chosen, table = select_variants(results, "net")
    assert chosen[("d3s", 1, "soft")] == "a/default/default" and chosen[("d3s", 1, "hard")] == "a/hard/lr=0.01"
    assert len(table) == 5  # every variant stays in the sweep table
    with pytest.raises(D3SError, match="no results of the selecting student other"):
        select_variants(results, "other")


def test_hard_label_budgets_ignore_relabel_grids():
    config = {"d3s": {"distill": {"lr": [0.1, 0.25]}}, "random": {"relabel": {"epochs": [100, 300]}}}
    sweep.check_budgets(config, ["d3s", "random"], [1], ("soft",))
    with pytest.raises(ValueError, match=r"\(d3s 2, random 1 variants for hard-label students"):
        sweep.check_budgets(config, ["d3s", "random"], [1], ("soft", "hard"))


def test_plots_draw_the_sets_the_summary_reports(tmp_path):
    """Of several distilled sets per method and IPC, a plot draws the one the summary reports: the
    soft-label row's set, chosen on validation (set b here, though a is better on test)."""
    results = []
    for seed in (0, 1):
        results += [
            _result("d3s", 1, "a/default/default", "net", seed, 0.4, 0.9),
            _result("d3s", 1, "b/default/default", "net", seed, 0.6, 0.5),
            _result("d3s", 1, "a/hard/default", "net", seed, 0.9, 0.9, "hard"),
            _result("d3s", 1, "b/hard/default", "net", seed, 0.1, 0.1, "hard"),
            _result("random", 1, "default/default/default", "net", seed, 0.3, 0.3),
        ]
    files = []
    for i, r in enumerate(results):
        files.append(tmp_path / f"{i}.json")
        files[-1].write_text(json.dumps(r))
    rows, sweep_rows = summarize([str(p) for p in files], [], "toy")
    tsv = tmp_path / "summary.tsv"
    write_tables(rows, str(tsv), str(tmp_path / "summary.md"), [], sweep_rows)
    root = "results/toy"
    sets = [f"{root}/d3s/ipc1/a/images.h5", f"{root}/d3s/ipc1/b/images.h5", f"{root}/random/ipc1/default/images.h5"]
    assert reported_sets(sets, str(tsv)) == [sets[1], sets[2]]
    with pytest.raises(D3SError, match="reports distilled set 'b'"):
        reported_sets(sets[:1], str(tsv))
    with pytest.raises(D3SError, match="2 distilled sets"):
        reported_sets(sets, None)
    bad = tmp_path / "bad.tsv"
    bad.write_text("method\tipc\nd3s\t1\n")
    with pytest.raises(D3SError, match="not a d3s summary table"):
        reported_sets(sets, str(bad))
    # one set per method and IPC, or a file outside the workflow's layout: drawn as given
    assert reported_sets([sets[2], str(tmp_path / "mine.h5")], None) == [sets[2], str(tmp_path / "mine.h5")]
