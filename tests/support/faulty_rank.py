"""A multi-GPU rank whose first warm-up fails on rank 1 only: a kernel that fails on one card.

`ParallelVideoModel(target=...)` starts it in place of `worker_main` (a spawned process cannot be
patched from the test); everything else is the real rank."""

from __future__ import annotations

from typing import Any

from cogvx.parallel.workers import worker_main

FAULT = "no kernel image is available for execution on the device"


def rank_1_fails_first_warm_up(rank: int, *args: Any) -> None:
    """worker_main, with rank 1's warm-up raising at fallback step 0."""
    rung = args[-1]
    if rank == 1 and rung == 0:
        import cogvx.speed.apply as apply

        def broken(*_: Any, **__: Any) -> float:
            raise RuntimeError(FAULT)

        apply.warm_up = broken  # type: ignore[assignment]
    worker_main(rank, *args)
