"""The GPU speed benchmark's code runs (CPU smoke run on the tiny models: no CUDA row is timed)."""

from __future__ import annotations

from benchmarks.gpu import bench_speed


def test_tiny_smoke_run_prints_every_row(capsys):
    bench_speed.main(["--tiny", "--models", "t2v-5b"])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| t2v-5b |")]
    assert [line.split(" | ")[1] for line in table] == [
        "bf16 eager", "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert "CPU (no CUDA device)" in out and "ratios (bf16 eager" in out


def test_caption_batch_gpu_bench_smoke_run(capsys):
    from benchmarks.gpu import bench_caption_batch

    bench_caption_batch.main(["--tiny", "--clips", "4", "--tokens", "4", "--sizes", "1,2"])
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 2 |" in out and "batch 2:" in out
