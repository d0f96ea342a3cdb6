"""Generation over several GPUs: the degree plan (`plan`), the split inside a rank (`engine`,
diffusers' context parallelism with a CogVideoX plan) and the predictor's workers (`workers`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cogvx import settings
from cogvx.log import log as log_line
from cogvx.parallel.plan import ParallelPlan, plan_parallel


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_plan(model: str, gpus: int, override: str) -> tuple[ParallelPlan, str]:
    """(plan, device type of its ranks). Without CUDA an explicit COGVX_PARALLEL runs CPU
    processes (tests of the worker lifecycle); automatic plans need two or more GPUs."""
    from cogvx.cogvideox.released import transformer_config

    heads = int(transformer_config(model)["num_attention_heads"])
    if gpus == 0 and override.strip():
        from cogvx.parallel.plan import parse_override

        degrees = parse_override(override)
        gpus = degrees.world if degrees is not None else 0
        return plan_parallel(gpus, heads, override), "cpu"
    return plan_parallel(gpus, heads, override), "cuda"


def load_video_model(model: str, weights: str | None, log: Callable[[str], None] = log_line) -> Any:
    """`VideoModel.load` on one GPU (or CPU); a `ParallelVideoModel` when the plan splits."""
    from cogvx.cogvideox.generate import VideoModel

    plan, device_type = choose_plan(model, visible_gpus(), settings.parallel_override())
    if not plan.parallel:
        return VideoModel.load(model, weights, log=log)
    from cogvx.parallel.workers import ParallelVideoModel

    assert plan.degrees is not None
    log(f"parallel: {plan.degrees.describe()} ({plan.reason})")
    return ParallelVideoModel.start(model, weights, plan.degrees, device_type, log=log)
