"""The stall watch and the shutdown of the multi-GPU workers, with 2 real CPU ranks on gloo: a
rank stuck in a step (as in a deadlocked collective) fails the request after
COGVX_PARALLEL_STALL_S and the pool restarts; rank 0's per-step heartbeats keep a long request
alive; `close` gives every rank one shared deadline. Tiny t2v-5b weights."""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time

import pytest

from cogvx.dev.tiny import save_tiny_weights
from cogvx.parallel.plan import Degrees
from cogvx.parallel.workers import ParallelVideoModel, WorkerError, stop_processes
from tests.parallel.ranks import (
    SLOW_PROMPT,
    SLOW_STEP_S,
    STUCK_PROMPT,
    fox_request,
    ranks_stick_or_crawl,
)
from tests.parallel.sleepers import ignore_sigterm_forever, sleep_forever

STALL_S = 4 * SLOW_STEP_S  # a slow request runs longer than this, each of its steps shorter


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = save_tiny_weights("t2v-5b", tmp_path_factory.mktemp("stall") / "t2v-5b")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COGVX_PARALLEL_STALL_S", f"{STALL_S:g}")
        model = ParallelVideoModel.start(
            "t2v-5b", str(folder), Degrees(ulysses=2), "cpu", lines.append,
            target=ranks_stick_or_crawl,
        )  # fmt: skip
    model.lines = lines
    yield model
    model.close()


def test_heartbeats_keep_a_request_longer_than_the_stall_limit_running(pool):
    steps = 6  # 6 s of sleeping alone, every step well under the 4 s limit
    assert steps * SLOW_STEP_S > STALL_S
    procs = list(pool.procs)
    result = pool.generate(fox_request(prompt=SLOW_PROMPT, num_inference_steps=steps))
    assert result.frames.shape == (9, 32, 48, 3)
    assert pool.procs == procs  # no restart


def test_a_rank_stuck_in_a_step_fails_the_request_after_the_limit_and_the_pool_restarts(pool):
    old = list(pool.procs)
    outcome: dict = {}

    def run() -> None:
        try:
            pool.generate(fox_request(prompt=STUCK_PROMPT, num_inference_steps=4))
        except BaseException as exc:  # noqa: BLE001
            outcome["exc"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(180)  # without the watch it waits for ever (until the fixture closes the pool)
    assert not thread.is_alive(), "the stalled request did not fail"
    exc = outcome.get("exc")
    assert isinstance(exc, WorkerError), outcome
    assert f"rank 0 sent nothing for {STALL_S:g} s" in str(exc)
    assert f"COGVX_PARALLEL_STALL_S={STALL_S:g}" in str(exc)
    assert "no reply from ranks 0, 1" in str(exc)
    assert pool.procs == [] and not any(p.is_alive() for p in old)  # stopped, stuck rank too
    result = pool.generate(fox_request(num_inference_steps=2))  # a new pool
    assert result.frames.shape == (9, 32, 48, 3)
    assert len(pool.procs) == 2 and all(p not in old for p in pool.procs)


def _started(*targets: tuple) -> list:
    """Spawned daemon processes, one per (target, args)."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=t, args=args, daemon=True) for t, args in targets]
    for proc in procs:
        proc.start()
    return procs


def test_stopping_processes_shares_one_deadline_across_them():
    """Four processes that never leave on their own: one grace period in all, not one each."""
    grace = 3.0
    procs = _started(*[(sleep_forever, ())] * 4)
    t0 = time.monotonic()
    stop_processes(procs, grace)
    took = time.monotonic() - t0
    assert not any(p.is_alive() for p in procs)
    assert all(p.exitcode == -signal.SIGTERM for p in procs)
    assert took < 2 * grace  # one wait per process would be 4 x 3 s


def test_a_process_that_ignores_sigterm_is_killed():
    ready = mp.get_context("spawn").Event()
    procs = _started((ignore_sigterm_forever, (ready,)), (sleep_forever, ()))
    assert ready.wait(120)
    stop_processes(procs, 0.5)
    assert [p.exitcode for p in procs] == [-signal.SIGKILL, -signal.SIGTERM]
