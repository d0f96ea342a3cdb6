"""Light process entry points (no torch import) for the tests of stopping ranks: processes that
never leave on their own, and benchmark ranks that never report or fail."""

from __future__ import annotations

import signal
import time
from typing import Any

from cogvx.children import exit_with_parent

RANK_FAULT = "planned: this benchmark rank fails"


def sleep_forever() -> None:
    """A process that only a signal ends (it dies with the test process, too)."""
    exit_with_parent()
    while True:
        time.sleep(60)


def ignore_sigterm_forever(ready: Any) -> None:
    """A process that SIGTERM does not end, only SIGKILL; `ready` (an Event) is set once it
    ignores SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    sleep_forever()


def bench_rank_never_reports(rank: int, *args: Any) -> None:
    """A benchmark rank that hangs before its row (a rank stuck in a collective)."""
    sleep_forever()


def bench_rank_1_fails(rank: int, *args: Any) -> None:
    """A benchmark rank 1 that fails at once; rank 0 hangs, waiting for it."""
    if rank == 1:
        raise RuntimeError(RANK_FAULT)
    sleep_forever()
