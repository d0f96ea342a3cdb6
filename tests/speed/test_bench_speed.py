"""The GPU speed benchmark's code runs (CPU smoke run on the tiny models: no CUDA row is timed)."""

from __future__ import annotations

import pytest

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


def test_a_failing_setting_becomes_a_row_and_the_run_goes_on(capsys, monkeypatch, tmp_path):
    """A lever that raises (a kernel the card refuses) is reported, not fatal: later rows run."""
    import json

    from cogvx.speed.cache import FastModeSlot

    real_apply = FastModeSlot.apply

    def apply(self, mode, pipe, guidance):
        if mode == "balanced":
            raise RuntimeError("no kernel image is available for execution on the device")
        return real_apply(self, mode, pipe, guidance)

    monkeypatch.setattr(FastModeSlot, "apply", apply)
    out_file = tmp_path / "rows.jsonl"
    bench_speed.main(["--tiny", "--models", "t2v-5b", "--out", str(out_file)])
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| t2v-5b |")]
    assert [line.split(" | ")[1] for line in table] == [
        "bf16 eager", "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert "failed: RuntimeError: no kernel image" in table[1]
    assert table[2].endswith("x |")  # measured after the failure
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["setting"] for r in rows] == [
        "bf16 eager", "+ fast_mode=balanced", "+ fast_mode=fast",
    ]  # fmt: skip
    assert "failed" in rows[1] and rows[2]["s_step"] > 0


def test_full_size_without_cuda_is_refused_at_once(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_speed.main(["--models", "t2v-5b"])
    assert stop.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err
