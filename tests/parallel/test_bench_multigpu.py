"""The multi-GPU benchmark's code runs: CPU smoke run with 2 gloo ranks on the tiny model."""

from __future__ import annotations

from benchmarks.gpu import bench_multigpu
from cogvx.parallel.plan import Degrees


def test_settings_cover_every_power_of_two_with_and_without_cfg():
    assert bench_multigpu.settings(1) == [Degrees()]
    assert bench_multigpu.settings(8) == [
        Degrees(), Degrees(ulysses=2), Degrees(cfg=2), Degrees(ulysses=4),
        Degrees(ulysses=2, cfg=2), Degrees(ulysses=8), Degrees(ulysses=4, cfg=2),
    ]  # fmt: skip


def test_tiny_smoke_run_prints_every_row(capsys):
    bench_multigpu.main(["--tiny", "--gpus", "2", "--steps", "2"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ulysses=")]
    assert [r.split(" | ")[1] for r in rows] == ["1", "2", "2"]
    assert "CPU (tiny model, gloo)" in out and "1.00x" in rows[0]
