"""The shard value: one spelling, one parser, the same plan for the rules, the CLI and the scale plan."""

from __future__ import annotations

import re

import pytest

from d3s.errors import D3SError
from d3s.shard import PATTERN, Shard, plan_shards


@pytest.mark.parametrize(
    "text, shard",
    [
        ("i0-5_call", Shard(0, 5)),
        ("i5-10_c0-100", Shard(5, 10, 0, 100)),
        ("i18-20_c10000-10450", Shard(18, 20, 10000, 10450)),
    ],
)
def test_spelling_round_trips(text, shard):
    assert Shard.parse(text) == shard and str(shard) == text and re.fullmatch(PATTERN, text)


@pytest.mark.parametrize("text", ["ipc0-5", "i0-5", "i0-5_c", "i5-5_call", "i0-5_c4-2", "0-5_call", "i0-5_call "])
def test_other_spellings_are_refused_with_the_expected_form(text):
    with pytest.raises(D3SError, match=r"i0-5_call|need 0 <="):
        Shard.parse(text)


def test_slots_are_ipc_major_and_class_blocks_checked_against_the_class_count():
    assert Shard(1, 3, 4, 6).slots(10) == [(1, 4), (1, 5), (2, 4), (2, 5)]
    assert Shard(0, 1).slots(3) == [(0, 0), (0, 1), (0, 2)]
    with pytest.raises(D3SError, match="classes up to 12, but the teachers have 10"):
        Shard(0, 1, 8, 12).slots(10)


def test_plan_covers_every_slot_once():
    shards = plan_shards(ipc=12, ipc_per_shard=5, num_classes=7, classes_per_shard=3)
    assert [str(s) for s in shards[:4]] == ["i0-5_c0-3", "i0-5_c3-6", "i0-5_c6-7", "i5-10_c0-3"]
    slots = [slot for s in shards for slot in s.slots(7)]
    assert sorted(slots) == [(i, c) for i in range(12) for c in range(7)]
    assert plan_shards(10, 5) == [Shard(0, 5), Shard(5, 10)]
    with pytest.raises(D3SError, match="num_classes"):
        plan_shards(10, 5, None, 100)
