#!/usr/bin/env bash
# Install cfgen (editable) with its test tools, keeping an installed torch.
# Where torch is absent, a CPU-only machine gets the CPU build pinned below instead of the
# registry's default CUDA build (several GB of nvidia packages); a machine with an NVIDIA driver
# gets the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q torch torchvision
  else
    "$PYTHON" -m pip install -q torch==2.13.0 torchvision==0.28.0
  fi
fi
"$PYTHON" -m pip install -q -e ".[test]"
