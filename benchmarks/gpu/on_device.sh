#!/usr/bin/env bash
# On a lent GPU machine: install the carried wheels (tools/gpu_wheels.sh made them), run the CUDA
# checks (tests/gpu), then the speed benchmark. Everything it prints also goes to $OUT.
# With the device tool, after `bash tools/gpu_wheels.sh` here (the exact call: docs/speed.md):
#   run(command="CALL_S=570 BENCH_ARGS='...' bash benchmarks/gpu/on_device.sh", carry=[".whl"],
#       timeout_s=580)
# CALL_S: seconds from this script's start by which everything has ended (a little under the
#   call's timeout_s; default 570).
# CHECKS_S: the checks' limit (default 75; 0 skips them); CHECKS_K: their pytest -k selection
#   (default: each SDPA kernel against diffusers' processor and the setup path on the tiny 5b:
#   plan, compile + fp8 warm-up, fast_mode restore; empty: all of tests/gpu).
# BENCH_S: the benchmark's limit (default: all that is left of CALL_S; 0 skips it). It gets the
#   end of that limit less 15 s (its table, its exit) as --deadline, and starts no row that
#   would end after it. BENCH_ARGS goes to bench_speed (e.g. "--models t2v-1.5").
set -uo pipefail
start=$(date +%s)
end=$((start + ${CALL_S:-570}))
out=${OUT:-/tmp/cogvx-gpu-out}
site=${SITE:-/tmp/site}
mkdir -p "$out"
checks_s=${CHECKS_S:-75}
checks_k=${CHECKS_K-dispatch_processor or (setup_applies and t2v-5b)}
left() { echo $((end - $(date +%s))); }
limit() { local l; l=$(left); if [ "$1" -lt "$l" ]; then echo "$1"; else echo "$l"; fi; }
export PYTHONUNBUFFERED=1 PYTHONPATH="$site:$PWD" HF_HUB_OFFLINE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl || exit 1
  # torchao's wheel ships its own tests as a top-level `test` package, which would shadow the
  # standard library's `test` on PYTHONPATH
  if grep -qsx test "$site"/torchao-*.dist-info/top_level.txt; then rm -rf "$site/test"; fi
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    || echo "no nvidia-smi"
  python3 -m benchmarks.gpu.bench_speed --versions
  echo "on_device: $(left) s left of CALL_S=${CALL_S:-570} after the install"
} 2>&1 | tee "$out/device.txt"
status=0
checks_s=$(limit "$checks_s")
if [ "$checks_s" -gt 0 ]; then
  select=()
  [ -z "$checks_k" ] || select=(-k "$checks_k")
  timeout "$checks_s" python3 -m pytest -q -p no:cacheprovider -o addopts="-ra" \
    ${select[@]+"${select[@]}"} tests/gpu 2>&1 | tee "$out/checks.log"
  status=${PIPESTATUS[0]}
fi
bench_s=$(limit "${BENCH_S:-$(left)}")
if [ "${BENCH_S:-1}" -gt 0 ] && [ "$bench_s" -gt 0 ]; then
  deadline=$(($(date +%s) + bench_s - 15))
  echo "on_device: benchmark limit ${bench_s} s, rows end by $((deadline - start)) s" \
    | tee -a "$out/device.txt"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  timeout "$bench_s" python3 -m benchmarks.gpu.bench_speed --deadline "$deadline" \
    --out "$out/rows.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log"
  bench=${PIPESTATUS[0]}
  [ "$bench" -eq 0 ] || status=$bench
fi
exit "$status"
