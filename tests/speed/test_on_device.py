"""benchmarks/gpu/on_device.sh, the lent GPU machine's one command, runs here end to end on the
CPU: card and versions, the CUDA checks (they skip), the benchmark (--tiny), all under $OUT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"  # the device's python3 is its torch one; here, this venv's
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # (a link loses the venv)
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(out), **env}
    done = subprocess.run(
        ["bash", "benchmarks/gpu/on_device.sh"],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done, out


def test_checks_then_benchmark_write_their_logs_and_rows(tmp_path):
    done, out = _run(tmp_path, CHECKS_S="300", BENCH_S="300", BENCH_ARGS="--tiny --models t2v-5b")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    device = (out / "device.txt").read_text()
    assert "CPU (no CUDA device); torch " in device and "diffusers 0.42.1" in device
    assert re.search(r"on_device: benchmark limit (\d+) s, rows end by \d+ s", device)
    checks = (out / "checks.log").read_text()
    assert "skipped" in checks and "needs a CUDA device" in checks and "failed" not in checks
    # the default selection: the SDPA kernels' test and the tiny 5b's setup path
    assert "2 skipped, 4 deselected" in checks
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert [r["setting"] for r in rows] == [
        "bf16 eager", "VAE decode", "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    bench = (out / "bench.log").read_text()
    assert "ratios (bf16 eager" in bench and "s left" in bench  # it was given a deadline


def test_the_call_limit_bounds_the_benchmark_and_an_empty_selection_runs_every_check(tmp_path):
    done, out = _run(tmp_path, CALL_S="200", CHECKS_K="", BENCH_ARGS="--tiny --models t2v-5b")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 skipped" in (out / "checks.log").read_text()
    device = (out / "device.txt").read_text()
    limit, end = map(int, re.findall(r"benchmark limit (\d+) s, rows end by (\d+) s", device)[0])
    assert 0 < limit < 200 and end <= 200 - 15


def test_a_part_can_be_left_out_and_a_failing_part_sets_the_exit_status(tmp_path):
    done, out = _run(tmp_path, CHECKS_S="0", BENCH_S="100", BENCH_ARGS="--models t2v-5b")
    assert done.returncode == 2  # full size without CUDA is refused at once
    assert not (out / "checks.log").exists()
    assert "no CUDA device: the full-size models need one" in (out / "bench.log").read_text()
