"""What a VEnhancer run costs: frame-evaluations, and FLOPs counted on the released model's shapes.

`python -m cogvx.venhancer.cost` prints the table in docs/venhancer.md (about a minute on CPU:
the released UNet + ControlNet run on the meta device under torch's FlopCounterMode).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from cogvx.venhancer import arith
from cogvx.venhancer.schedule import Schedule
from cogvx.venhancer.unet import RELEASED_CONFIG


@dataclass(frozen=True)
class Cost:
    """The work of one run: UNet+ControlNet frame-evaluations = frames x steps x passes."""

    frames_per_step: int  # latent frames per solver step and pass (chunk overlaps count twice)
    steps: int
    passes: int  # 2 with classifier-free guidance, 1 without
    latent_h: int
    latent_w: int

    @property
    def frame_evaluations(self) -> int:
        return self.frames_per_step * self.steps * self.passes

    def describe(self) -> str:
        return (
            f"{self.frames_per_step} frames x {self.steps} steps x {self.passes} passes = "
            f"{self.frame_evaluations} frame-evaluations at latent {self.latent_h}x{self.latent_w}"
        )


def run_cost(plan: arith.Plan, solver_mode: str, steps: int, guidance_scale: float) -> Cost:
    """Cost of sampling `plan` (the VAE and the text encoder are not counted)."""
    n_steps = len(Schedule().timesteps(solver_mode, steps))
    _, _, lh, lw = plan.latent_shape
    passes = 1 if guidance_scale == 1.0 else 2
    return Cost(plan.evaluated_frames, n_steps, passes, lh, lw)


def flops_per_frame(
    latent_h: int, latent_w: int, frames: int = 31, config: dict | None = None
) -> float:
    """FLOPs of one UNet+ControlNet call per latent frame (matmuls, convs, attention).

    Counted with torch's FlopCounterMode on meta tensors of the released model (or `config`);
    `frames` only changes the small temporal-attention share.
    """
    items = tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted((config or {}).items())
    )
    return _count_flops(latent_h, latent_w, frames, items)


@lru_cache(maxsize=16)
def _count_flops(latent_h: int, latent_w: int, frames: int, config_items: tuple) -> float:
    import torch.fx.experimental._config as fx_config
    from torch.utils.flop_counter import FlopCounterMode

    from cogvx.venhancer.controlnet import VEnhancerUNet, VideoControlNet
    from cogvx.venhancer.unet import build_unet

    config: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in config_items}
    config = config or RELEASED_CONFIG
    with torch.device("meta"):
        model = VEnhancerUNet(build_unet(config), VideoControlNet.from_unet_config(config))
        x = torch.empty(1, config["in_channels"], frames, latent_h, latent_w)
        y = torch.empty(1, 77, config["cross_attention_dim"])
        t = torch.empty(1, dtype=torch.long)
        mask = torch.empty(1, frames, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    saved = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True  # nonzero() on meta: count every key frame
    try:
        with counter, torch.no_grad():
            model(x, t, y, x, t, t, mask)
    finally:
        fx_config.meta_nonzero_assume_all_nonzero = saved
    return counter.get_total_flops() / frames


def run_flops(cost: Cost) -> float:
    """FLOPs of sampling (frame-evaluations x FLOPs per frame at the run's latent size)."""
    return cost.frame_evaluations * flops_per_frame(cost.latent_h, cost.latent_w)


# (label, up_scale, target_fps, solver_mode, steps, guidance, chunk_overlap) for a 49-frame
# 8 fps 480x720 CogVideoX video; the first row is the original's defaults.
TABLE_ROWS = [
    ("original defaults (x4 -> 1254x1880, 24 fps)", 4, 24, "fast", 15, 7.5, 16),
    ("x2, 16 fps, original overlap 16", 2, 16, "fast", 15, 7.5, 16),
    ("x2, 16 fps, overlap 8 (recommended)", 2, 16, "fast", 15, 7.5, 8),
    ("x2, 16 fps, overlap 8, guidance off", 2, 16, "fast", 15, 1.0, 8),
    ("x2, 16 fps, overlap 8, normal 8 steps", 2, 16, "normal", 8, 7.5, 8),
    ("x2, 8 fps (space only), overlap 8", 2, 8, "fast", 15, 7.5, 8),
]


def flops_table(frames: int = 49, fps: float = 8.0, h: int = 480, w: int = 720) -> str:
    """Markdown table of the sampling cost of TABLE_ROWS for one input video."""
    lines = [
        "| setting | output | latent | frames/step | steps x passes | frame-evals | PFLOP "
        "| fewer FLOPs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    base = None
    for label, scale, tfps, mode, steps, g, overlap in TABLE_ROWS:
        plan = arith.make_plan(frames, fps, h, w, scale, tfps, overlap)
        cost = run_cost(plan, mode, steps, g)
        pflop = run_flops(cost) / 1e15
        base = base or pflop
        lines.append(
            f"| {label} | {plan.out_frames} x {plan.target_h}x{plan.target_w} @ "
            f"{plan.out_fps:g} fps | {cost.latent_h}x{cost.latent_w} | {cost.frames_per_step} | "
            f"{cost.steps} x {cost.passes} | {cost.frame_evaluations} | {pflop:.0f} | "
            f"{base / pflop:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(flops_table())
