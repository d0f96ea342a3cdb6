"""The multi-GPU benchmark's code runs: CPU smoke run with 2 gloo ranks on the tiny model; a
rank that never reports or fails ends the row with the reason, its ranks stopped."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def _report_address(rank: int, d: Degrees, address: str, args: Any, queue: Any) -> None:
    """A benchmark rank 0 whose row is the rendezvous it was given (and whether its folder is)."""
    if rank == 0:
        folder = Path(urlsplit(address).path).parent
        queue.put({"step": 1.0, "decode": 0.0, "peak": 0.0, "address": address,
                   "folder_there": folder.is_dir()})  # fmt: skip


def test_the_ranks_meet_at_a_file_store_in_a_fresh_folder_removed_after_the_row():
    """No port is picked, so no other process can take it between the pick and the bind."""
    args = bench_multigpu.parse_args(["--tiny", "--budget", "120"])
    rows = [bench_multigpu.run_setting(Degrees(ulysses=2), args, target=_report_address)
            for _ in range(2)]  # fmt: skip
    addresses = [row["address"] for row in rows]
    assert all(a.startswith("file://") for a in addresses) and addresses[0] != addresses[1]
    assert all(row["folder_there"] for row in rows)
    assert not any(Path(urlsplit(a).path).parent.exists() for a in addresses)
    assert _no_bench_ranks_left()
