"""The multi-GPU benchmark's code runs: CPU smoke run with 2 gloo ranks on the tiny model; a
rank that never reports or fails ends the row with the reason, its ranks stopped."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from benchmarks.gpu import bench_multigpu
from cogvx.parallel.plan import Degrees
from tests.parallel.sleepers import bench_rank_1_fails, bench_rank_never_reports


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


def _no_bench_ranks_left() -> bool:
    return not any(p.name.startswith("bench-rank") for p in mp.active_children())


SETTING = Degrees(ulysses=2).describe()


def test_a_rank_that_never_reports_fails_the_row_after_the_budget_and_is_stopped():
    args = bench_multigpu.parse_args(["--tiny", "--budget", "2"])
    with pytest.raises(bench_multigpu.RowFailed) as caught:
        bench_multigpu.run_setting(Degrees(ulysses=2), args, target=bench_rank_never_reports)
    assert str(caught.value) == (
        f"{SETTING}: rank 0 did not report its row within 2 s (--budget; ranks 0, 1 still "
        "running, perhaps stuck in a collective)"
    )
    assert _no_bench_ranks_left()


def test_a_failing_rank_fails_the_row_naming_it_without_waiting_for_the_budget():
    args = bench_multigpu.parse_args(["--tiny", "--budget", "3600"])  # would outlast the test
    with pytest.raises(bench_multigpu.RowFailed) as caught:
        bench_multigpu.run_setting(Degrees(ulysses=2), args, target=bench_rank_1_fails)
    assert str(caught.value) == f"{SETTING}: rank 1 failed (exit code 1); see its log"
    assert _no_bench_ranks_left()
