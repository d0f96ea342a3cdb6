#!/usr/bin/env bash
# Fetch, here, the wheels a lent GPU machine lacks, into .whl/ (git-ignored), for
# benchmarks/gpu/on_device.sh. That machine has no network; its image has torch 2.11 (CUDA),
# transformers, accelerate, peft, safetensors, Pillow and PyYAML for Python 3.12, but neither
# diffusers nor torchao. The versions are the ones requirements/t2v.txt pins (torchao 0.18
# needs torch >= 2.11). diffusers' importlib_metadata requirement is for Python < 3.8 only (it
# uses the standard library's importlib.metadata above that), so no wheel for it: the PyPI one
# (10.x) needs lazy-importer, which that machine lacks, and sat first on its PYTHONPATH.
#   bash tools/gpu_wheels.sh            # then the device call in docs/speed.md, carry [".whl"]
#   GPU_PYTHON=3.11 bash tools/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${GPU_PYTHON:-3.12}
pin() { grep -ho "^$1==[^ ]*" requirements/t2v.txt | head -1; }
wheels=("$(pin diffusers)" "$(pin torchao)")
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
