"""The method registry: every method a run compares, by the name config, paths and result files use.

A method either synthesises images (`distill --method NAME`, with its statistics-matching
objective) or takes real images (`select-real`), or is the full-data upper bound. What the CLI
offers, which sweep sections a method has, the summary's row order and the figures' legend all
come from here, so a new synthesis method is one `register_method` call plus its objective class.

Torch-free: the workflow imports it (through `d3s.sweep`) to plan jobs; an objective class is
named by its import path and imported only when `matching_class` is called.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .errors import D3SError


@dataclass(frozen=True)
class Method:
    name: str  # as in config `methods`, workflow paths and result files
    label: str  # in figures and tables
    synthesises: bool  # distils images; else it takes real ones (or, without an IPC, the whole training set)
    needs_stats: bool = False  # its objective matches `extract-stats` statistics (distill --stats)
    matching: str | None = None  # "module:Class" of its statistics-matching objective (synthesising methods)
    description: str = ""  # what `distill --method` says about it
    per_ipc: bool = True  # makes a set per IPC; False: the full-data student
    colour: str | None = None  # line colour in accuracy-vs-IPC figures (None: matplotlib's next one)
    marker: str = "o"

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections (stages) its runs use, so the ones a sweep may vary."""
        return (("distill",) if self.synthesises else ()) + (("relabel",) if self.per_ipc else ()) + ("evaluate",)

    def matching_class(self) -> type:
        """Its objective class, imported now (it needs torch)."""
        if self.matching is None:
            raise D3SError(
                f"method '{self.name}' synthesises no images; distill runs {', '.join(synthesising_methods())}"
            )
        module, _, cls = self.matching.partition(":")
        return getattr(importlib.import_module(module), cls)


_METHODS: dict[str, Method] = {}  # in registration order: the order of tables and figures


def register_method(method: Method) -> Method:
    if method.name in _METHODS:
        raise ValueError(f"method '{method.name}' is registered twice")
    if method.synthesises != (method.matching is not None):
        raise ValueError(f"method '{method.name}': a synthesising method names its matching class, others none")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise D3SError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}") from None


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


def synthesising_methods() -> tuple[str, ...]:
    return tuple(name for name, m in _METHODS.items() if m.synthesises)


register_method(
    Method(
        "d3s",
        "D3S",
        synthesises=True,
        needs_stats=True,
        matching="d3s.distill:GaussianMatching",
        description="match full-covariance Gaussians of the real data",
        colour="C0",
        marker="o",
    )
)
register_method(
    Method(
        "sre2l",
        "SRe2L",
        synthesises=True,
        matching="d3s.distill:RunningStatsMatching",
        description="the SRe2L baseline (BN running stats)",
        colour="C1",
        marker="s",
    )
)
register_method(Method("herding", "herding", synthesises=False, colour="C3", marker="v"))
register_method(Method("kcenter", "k-center", synthesises=False, colour="C4", marker="D"))
register_method(Method("random", "random real", synthesises=False, colour="C2", marker="^"))
register_method(Method("full", "full data", synthesises=False, per_ipc=False))
