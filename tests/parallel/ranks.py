"""Multi-GPU rank entry points for the worker tests (`ParallelVideoModel(target=...)` starts them
in place of `worker_main`: a spawned process cannot be patched from the test). Everything but the
patched step is the real rank."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cogvx.cogvideox.generate import Request
from cogvx.parallel.workers import worker_main


def fox_request(**kw: Any) -> Request:
    """The worker tests' request: 9 frames, 4 steps, seed 3; `kw` overrides."""
    base = dict(prompt="a red fox runs", negative_prompt="", num_frames=9, num_inference_steps=4,
                guidance_scale=6.0, use_dynamic_cfg=True, seed=3, fast_mode="off")  # fmt: skip
    return Request(**{**base, **kw})


RANK_1_FAULT = "planned: rank 1 fails first"
RANK_0_FAULT = "planned: rank 0 fails after rank 1 reported"


class _MarkAfterError:
    """Rank 1's pipe: after it sends an error reply, touch the marker (rank 0 waits for it)."""

    def __init__(self, conn: Any, marker: list[Path]) -> None:
        self.conn, self.marker = conn, marker

    def send(self, message: tuple) -> None:
        self.conn.send(message)
        if message[0] == "error" and self.marker:
            self.marker[0].touch()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def ranks_fail_in_turn(rank: int, *args: Any) -> None:
    """worker_main whose generate fails on both ranks: rank 1 first with a plain ValueError (an
    internal error, not an input one), rank 0 only once rank 1's reply is on its way. The
    request's prompt names the marker file."""
    from cogvx.cogvideox.generate import VideoModel

    marker: list[Path] = []

    def generate(self: Any, req: Any) -> Any:
        marker[:] = [Path(req.prompt)]
        if rank == 1:
            raise ValueError(RANK_1_FAULT)
        while not marker[0].exists():
            time.sleep(0.01)
        raise RuntimeError(RANK_0_FAULT)

    VideoModel.generate = generate  # type: ignore[method-assign]
    args = list(args)
    if rank == 1:
        args[6] = _MarkAfterError(args[6], marker)  # conn, after world .. device_type
    worker_main(rank, *args)


STUCK_PROMPT = "stuck"  # rank 1 never finishes step 1: rank 0 waits in that step's agreement
SLOW_PROMPT = "slow"  # every rank sleeps SLOW_STEP_S after each step (heartbeats keep coming)
SLOW_STEP_S = 1.0


def ranks_stick_or_crawl(rank: int, *args: Any) -> None:
    """worker_main whose steps follow the request's prompt: STUCK_PROMPT hangs rank 1 for good
    at step 1 (a rank stuck in a collective; only terminating it ends it), SLOW_PROMPT slows
    every step by SLOW_STEP_S on every rank; other prompts run as usual."""
    import threading

    from cogvx.cogvideox.generate import VideoModel

    generate, after_step = VideoModel.generate, VideoModel._after_step
    prompt = [""]

    def remember(self: Any, req: Any) -> Any:
        prompt[0] = req.prompt
        return generate(self, req)

    def crawl(self: Any, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        if prompt[0] == STUCK_PROMPT and rank == 1 and step == 1:
            threading.Event().wait()
        if prompt[0] == SLOW_PROMPT:
            time.sleep(SLOW_STEP_S)
        return after_step(self, pipe, step, timestep, tensors)

    VideoModel.generate = remember  # type: ignore[method-assign]
    VideoModel._after_step = crawl  # type: ignore[method-assign]
    worker_main(rank, *args)
