#!/usr/bin/env bash
# Fetch, here, the wheels a lent GPU machine lacks, into .whl/ (git-ignored), for
# benchmarks/gpu/on_device.sh. That machine has no network; its image has torch 2.11 (CUDA),
# transformers, accelerate, peft, safetensors, Pillow and PyYAML for Python 3.12, but neither
# diffusers nor torchao. The versions are the ones requirements/t2v.txt pins (torchao 0.18
# needs torch >= 2.11).
#   bash tools/gpu_wheels.sh            # then: run "bash benchmarks/gpu/on_device.sh", carry .whl
#   GPU_PYTHON=3.11 bash tools/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${GPU_PYTHON:-3.12}
pin() { grep -ho "^$1==[^ ]*" requirements/t2v.txt | head -1; }
wheels=("$(pin diffusers)" "$(pin torchao)" "importlib_metadata==10.2.0")
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64; do
  platforms+=(--platform "$p")
done
rm -rf .whl
mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp "${platforms[@]}" -d .whl "${wheels[@]}"
ls .whl
du -sh .whl
