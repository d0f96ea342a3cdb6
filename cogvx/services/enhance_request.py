"""The enhance model's request: input checks, the input video's caps, prompt notes."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cogvx import checks
from cogvx.log import clip
from cogvx.venhancer.schedule import SOLVER_MODES
from cogvx.video import OUTPUT_FORMATS, VideoInfo, probe_video, refuse_larger_frames
from cogvx.video.write import GIF_MAX_FPS, check_gif_fps

Log = Callable[[str], None]

METHODS = ("venhancer", "fast")
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}
SIZE_POLICIES = ("original", "exact")
# Request ranges and choices, checked here. The predictor's Input(ge=, le=, choices=) repeat
# them as literals (Cog's static schema parser reads only literals);
# tests/test_predictor_inputs.py holds both equal.
RANGES: dict[str, tuple[float, float]] = {
    "up_scale": (1.0, 8.0),
    "target_fps": (1.0, 240.0),
    "noise_aug": (1, 300),
    "steps": (1, 50),
    "guidance_scale": (1.0, 20.0),
    "chunk_overlap": (1, 16),
    "output_quality": (1, 100),
}
CHOICES: dict[str, tuple] = {
    "method": METHODS,
    "size_policy": SIZE_POLICIES,
    "solver_mode": SOLVER_MODES,
    "precision": tuple(PRECISIONS),
    "output_format": OUTPUT_FORMATS,
}

MIN_SIDE = 16  # input frames smaller than this on either side are refused
MAX_INPUT_PIXELS = 4096 * 4096  # per input frame (decoding cost), as video-to-video
MAX_INPUT_FRAMES = 300  # e.g. 12.5 s at 24 fps; CogVideoX makes at most 161

CPU_MAX_EVAL_PIXELS = 2_000_000  # VEnhancer frame-evaluations x latent pixels

HEADROOM_GIB = 1.5  # CUDA context, allocator fragmentation


@dataclass(frozen=True)
class Request:
    """One enhancement, checked."""

    method: str
    prompt: str
    up_scale: float
    target_fps: float | None
    size_policy: str
    noise_aug: int
    solver_mode: str
    steps: int
    guidance_scale: float
    chunk_overlap: int
    precision: str
    seed: int | None
    output_format: str
    output_quality: int


def check_request(req: Request, log: Log = print) -> Request:
    """ValueError naming the first input outside what the predictor allows; else the request
    with integer inputs as ints (JSON 2.0 arrives as a float) and the prompt stripped and cut
    to checks.PROMPT_CHARS (logged), before anything tokenizes it."""
    prompt = checks.cut_text("prompt", checks.plain_text(req.prompt, "prompt"), log)
    for name in ("method", "size_policy", "solver_mode", "precision", "output_format"):
        checks.choice(name, getattr(req, name), CHOICES[name])
    for name in ("up_scale", "target_fps", "guidance_scale"):
        value = getattr(req, name)
        if value is not None:  # target_fps: blank = twice the input rate
            checks.in_range(name, value, *RANGES[name])
    whole: dict[str, Any] = {
        name: checks.integer(name, getattr(req, name), int(RANGES[name][0]), int(RANGES[name][1]))
        for name in ("noise_aug", "steps", "chunk_overlap", "output_quality")
    }
    return replace(req, **whole, prompt=prompt, seed=checks.seed(req.seed))


def probe_input(path: str | Path) -> VideoInfo:
    """Probe the input video and refuse sizes and lengths outside the caps."""
    info = probe_video(path, max_frames=MAX_INPUT_FRAMES)  # a longer file is not read to its end
    name = clip(info.path.name)
    if min(info.width, info.height) < MIN_SIDE:
        raise ValueError(
            f"video {name} is {info.width}x{info.height}; both sides must be >= {MIN_SIDE} pixels"
        )
    refuse_larger_frames(info, MAX_INPUT_PIXELS)
    if not 0 < info.fps <= 240:
        raise ValueError(f"video {name} states {info.fps:g} fps; 0-240 fps are accepted")
    if info.num_frames < 2:
        raise ValueError(f"video {name} has {info.num_frames} frame; at least 2 are needed")
    if info.num_frames > MAX_INPUT_FRAMES:
        raise ValueError(
            f"video {name} has more than {MAX_INPUT_FRAMES} frames ({info.duration:.1f} s at "
            f"{info.fps:.3g} fps); at most {MAX_INPUT_FRAMES} are accepted: trim it first"
        )
    return info


def resolve_target_fps(
    target_fps: float | None, in_fps: float, output_format: str = "mp4", log: Log = print
) -> float:
    """target_fps, or twice the input rate when blank (for a GIF the input rate when twice it is
    over GIF_MAX_FPS); never below the input rate, and within the target_fps range either way."""
    lo, hi = RANGES["target_fps"]
    if target_fps is None:
        if output_format == "gif" and 2 * in_fps > GIF_MAX_FPS:
            check_gif_fps(output_format, in_fps, f"the input video's {in_fps:.4g} fps")
            log(
                f"target_fps is blank and output_format=gif: twice the input's {in_fps:.4g} fps "
                f"is over the {GIF_MAX_FPS} fps a GIF plays, so the output keeps {in_fps:.4g} fps"
            )
            return in_fps
        if not lo <= 2 * in_fps <= hi:
            raise ValueError(
                f"target_fps: left blank it is twice the input video's {in_fps:.3g} fps, "
                f"{2 * in_fps:.3g}, outside the allowed {lo:g} to {hi:g}: set target_fps"
            )
        return 2 * in_fps
    if target_fps < in_fps - 1e-6:
        raise ValueError(
            f"target_fps={target_fps:g} is below the input video's {in_fps:.3g} fps; this model "
            f"only adds frames: use target_fps >= {in_fps:.3g} (= keeps the frame rate)"
        )
    return target_fps


def check_gif_rate(req: Request, in_fps: float, out_fps: float, factors: Sequence[int]) -> None:
    """Refuse a GIF over GIF_MAX_FPS, naming target_fps and the highest one that fits.

    factors: the frame-rate multiples the method makes (VEnhancer 1-9, RIFE 1, 2, 4, 8, 16)."""
    fits = [f for f in factors if in_fps * f <= GIF_MAX_FPS + 1e-6]
    fix = f"set target_fps to at most {in_fps * max(fits):.4g}" if fits else ""
    target = "blank" if req.target_fps is None else f"{req.target_fps:g}"
    inputs = f"target_fps={target} on this {in_fps:.4g} fps video"
    check_gif_fps(req.output_format, out_fps, inputs, fix)


def prompt_note(tokenizer: Any, prompt: str) -> str | None:
    """A log line when the prompt plus VEnhancer's quality suffix exceeds 77 CLIP tokens."""
    from cogvx.venhancer import text

    limit = text.MAX_TOKENS
    full = len(tokenizer(text.full_prompt(prompt), truncation=False, verbose=False).input_ids)
    if full <= limit:
        return None
    own = len(tokenizer(prompt.strip(), truncation=False, verbose=False).input_ids)
    if own > limit:
        return (
            f"prompt is {own} CLIP tokens; VEnhancer's text encoder reads {limit} (with start and "
            "end), so the end of the prompt and all of the quality suffix are cut (truncated)"
        )
    return (
        f"prompt + VEnhancer's quality suffix is {full} CLIP tokens; the text encoder reads "
        f"{limit}, so the last {full - limit} tokens of the suffix are cut (truncated)"
    )


def device_dtype(precision: str, device: torch.device) -> torch.dtype:
    """UNet + ControlNet dtype: the chosen precision on GPU, float32 on CPU."""
    return PRECISIONS[precision] if device.type == "cuda" else torch.float32


class ProgressLog:
    """`progress(done, total)` that logs about every 10 % (every step for short runs)."""

    def __init__(self, what: str, log: Log) -> None:
        self.what, self.log, self.last, self.t0 = what, log, -1.0, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if done == total or done / total - self.last >= 0.1:
            self.last = done / total
            self.log(f"{self.what} {done}/{total} ({time.perf_counter() - self.t0:.1f}s)")
