#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment of envs/d3s.yaml, right after creating it:
# install d3s itself without dependencies (the environment has them all, the CUDA torch included;
# pip would otherwise pull a torch from PyPI). D3S_SOURCE is set by rules/common.smk to this
# checkout (editable, so code changes need no new environment); for a workflow deployed as a
# module from GitHub set it yourself to a pip requirement such as git+https://...@<tag>.
set -euo pipefail
source="${D3S_SOURCE:?D3S_SOURCE is not set: run through the workflow, or set it to a d3s checkout or pip requirement}"
if [ -d "$source" ]; then
  python -m pip install --no-deps -e "$source"
else
  python -m pip install --no-deps "$source"
fi
# d3s checks at start that the workflow it runs for is the one installed here (an environment is
# shared by the checkouts that use one --conda-prefix): d3s/install.py
echo "$source" > "$(python -c 'import sys; print(sys.prefix)')/d3s-source.txt"
python -c "import d3s, torch; print('d3s', d3s.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
