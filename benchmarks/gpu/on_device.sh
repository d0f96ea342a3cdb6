#!/usr/bin/env bash
# On a lent GPU machine: install the carried wheels (tools/gpu_wheels.sh made them), run the CUDA
# checks (tests/gpu), then the speed benchmark. Everything it prints also goes to $OUT.
# With the device tool, after `bash tools/gpu_wheels.sh` here:
#   run(command="bash benchmarks/gpu/on_device.sh", carry=[".whl"], timeout_s=590)
# CHECKS_S / BENCH_S split the 10-minute call (defaults 150 / 400 seconds; 0 skips a part);
# BENCH_ARGS goes to bench_speed (e.g. "--models t2v-1.5").
set -uo pipefail
out=${OUT:-/tmp/cogvx-gpu-out}
mkdir -p "$out"
checks_s=${CHECKS_S:-150}
bench_s=${BENCH_S:-400}
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    || echo "no nvidia-smi"
  python3 -m benchmarks.gpu.bench_speed --versions
} 2>&1 | tee "$out/device.txt"
status=0
if [ "$checks_s" -gt 0 ]; then
  timeout "$checks_s" python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/gpu \
    2>&1 | tee "$out/checks.log"
  status=${PIPESTATUS[0]}
fi
if [ "$bench_s" -gt 0 ]; then
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout "$bench_s" python3 -m benchmarks.gpu.bench_speed --budget $((bench_s - 40)) \
    --out "$out/rows.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
  bench=${PIPESTATUS[0]}
  [ "$bench" -eq 0 ] || status=$bench
fi
exit "$status"
