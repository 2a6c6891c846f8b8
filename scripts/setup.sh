#!/usr/bin/env bash
# Create .venv and install hclm with its test tools. The CPU build of torch 2.13.0 is installed
# first where torch is missing, because a bare "torch" requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet "torch==2.13.0"
fi
.venv/bin/pip install --quiet -e ".[test]"
echo "hclm is installed in .venv"
