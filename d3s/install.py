"""Which d3s a job runs: the conda environment of the rules must hold this workflow's d3s.

Torch-free (it runs before every command).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import D3SError

SOURCE_MARKER = "d3s-source.txt"  # written into a conda environment by envs/d3s.post-deploy.sh


def check_installed_source(environ=os.environ, prefix: str | None = None) -> None:
    """In a conda environment that envs/d3s.post-deploy.sh made, the d3s it installed must be the
    one the workflow runs from (D3S_SOURCE, set by rules/common.smk). Snakemake names an
    environment by its files and --conda-prefix, not by the checkout, so two checkouts sharing a
    prefix share one environment, whose editable d3s is the first checkout's code."""
    wanted = environ.get("D3S_SOURCE")
    prefix = prefix or sys.prefix
    marker = Path(prefix) / SOURCE_MARKER
    if not wanted or not marker.is_file():
        return
    installed = marker.read_text().strip()
    if installed != wanted:
        raise D3SError(
            f"the conda environment {prefix} runs d3s from {installed}, but this workflow is {wanted}: "
            "environments are shared by every checkout with the same --conda-prefix. Give this checkout its "
            f"own --conda-prefix, or remove {prefix} so that Snakemake builds it again"
        )
