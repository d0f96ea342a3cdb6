"""A multi-GPU rank's watch on its parent process (`cogvx.children.exit_with_parent`): it ends the
rank when the predictor dies, whichever thread started the rank."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from pathlib import Path

from cogvx.children import exit_with_parent


def _rank() -> None:
    exit_with_parent()
    time.sleep(600)


def _predictor(pids: mp.Queue) -> None:
    """Starts a rank from a thread that then ends, reports its pid, and waits to be killed."""
    ctx = mp.get_context("spawn")
    box: list = []
    starter = threading.Thread(target=lambda: box.append(ctx.Process(target=_rank)))
    starter.start()
    starter.join()
    box[0].start()
    pids.put(box[0].pid)
    time.sleep(600)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a reaper counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_a_rank_exits_when_its_parent_process_is_killed():
    ctx = mp.get_context("spawn")
    pids: mp.Queue = ctx.Queue()
    predictor = ctx.Process(target=_predictor, args=(pids,))
    predictor.start()
    try:
        rank = pids.get(timeout=120)
        assert not _gone(rank)
        predictor.kill()  # SIGKILL: no cleanup runs in the predictor
        predictor.join()
        deadline = time.monotonic() + 60
        while not _gone(rank):
            assert time.monotonic() < deadline, f"rank {rank} outlived its parent"
            time.sleep(0.05)
    finally:
        predictor.kill()


def test_outside_a_multiprocessing_child_it_is_a_no_op():
    assert mp.parent_process() is None  # the test process: nothing to watch
    exit_with_parent()
    assert not any(t.name == "cogvx-parent-watch" for t in threading.enumerate())
