"""The distillation shard: a block of IPC indices x classes, one job's share of a distilled set.

One value, one spelling: `i0-5_call` (IPC indices 0..4 of every class) or `i5-10_c0-100`
(IPC indices 5..9 of classes 0..99). The workflow's shard files are named by it, `d3s distill
--shard` takes it, checkpoints and loss curves record it. Torch-free: the workflow plans with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import D3SError

PATTERN = r"i\d+-\d+_c(?:all|\d+-\d+)"  # a Snakemake wildcard constraint too
_PARTS = re.compile(r"i(\d+)-(\d+)_c(?:(all)|(\d+)-(\d+))")


@dataclass(frozen=True)
class Shard:
    """IPC indices [ipc_start, ipc_end) of classes [class_start, class_end); class_end None: every class."""

    ipc_start: int
    ipc_end: int
    class_start: int = 0
    class_end: int | None = None

    def __post_init__(self):
        if not 0 <= self.ipc_start < self.ipc_end:
            raise D3SError(f"shard {self}: need 0 <= first IPC index < end, got {self.ipc_start}..{self.ipc_end}")
        if self.class_end is not None and not 0 <= self.class_start < self.class_end:
            raise D3SError(f"shard {self}: need 0 <= first class < end, got {self.class_start}..{self.class_end}")
        if self.class_end is None and self.class_start:
            raise D3SError(f"shard: classes from {self.class_start} need an end")

    def __str__(self) -> str:
        classes = "all" if self.class_end is None else f"{self.class_start}-{self.class_end}"
        return f"i{self.ipc_start}-{self.ipc_end}_c{classes}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`i0-5_call` -> Shard(0, 5); `i5-10_c0-100` -> Shard(5, 10, 0, 100)."""
        m = _PARTS.fullmatch(text)
        if not m:
            raise D3SError(
                f"shard {text!r}: expected i<first>-<end>_c<classes>, classes 'all' or <first>-<end> "
                "(e.g. i0-5_call, i5-10_c0-100)"
            )
        a, b, every, c, d = m.groups()
        return cls(int(a), int(b)) if every else cls(int(a), int(b), int(c), int(d))

    def classes(self, num_classes: int) -> range:
        """The shard's classes of a set of `num_classes`."""
        end = num_classes if self.class_end is None else self.class_end
        if end > num_classes:
            raise D3SError(f"shard {self}: classes up to {end}, but the teachers have {num_classes}")
        return range(self.class_start, end)

    def slots(self, num_classes: int) -> list[tuple[int, int]]:
        """The (IPC index, class) slots in image order: IPC-major, so consecutive images differ in class."""
        return [(i, c) for i in range(self.ipc_start, self.ipc_end) for c in self.classes(num_classes)]

    @property
    def ipc_count(self) -> int:
        return self.ipc_end - self.ipc_start


def plan_shards(
    ipc: int, ipc_per_shard: int, num_classes: int | None = None, classes_per_shard: int = 0
) -> list[Shard]:
    """The shards of a distilled set of `ipc` images per class: blocks of `ipc_per_shard` IPC indices,
    and with `classes_per_shard` (which needs `num_classes`) blocks of that many classes."""
    ipc_blocks = [(a, min(a + ipc_per_shard, ipc)) for a in range(0, ipc, ipc_per_shard)]
    if not classes_per_shard:
        return [Shard(a, b) for a, b in ipc_blocks]
    if not num_classes:
        raise D3SError(
            "classes_per_shard needs the dataset's num_classes (class blocks are planned before the data is read)"
        )
    return [
        Shard(a, b, c, min(c + classes_per_shard, num_classes))
        for a, b in ipc_blocks
        for c in range(0, num_classes, classes_per_shard)
    ]
