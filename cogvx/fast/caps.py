"""Output caps and the RAM check of frame-sized work (the fast path and enhancement)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cogvx.errors import EnhanceMemoryError
from cogvx.fast.models import FastModels, scaled_size
from cogvx.gpu import available_memory_gib
from cogvx.log import log as log_line

Log = Callable[[str], None]

MAX_OUTPUT_FRAMES = 640
MAX_FAST_OUTPUT_PIXELS = 4096 * 4096  # per output frame of the fast path
# CPU runs are for tests and tiny models: cap the work so a mistake cannot run for hours.
CPU_MAX_OUTPUT_FRAMES = 97
CPU_MAX_FAST_PIXELS = 1920 * 1080  # per output frame of the fast path
# Real-ESRGAN runs at its own x2/x4 before the resize to up_scale: its float32 output batch is
# the fast path's largest buffer. It may be this many times the output cap.
NATIVE_OVER_OUTPUT = 4

SMALLER_RUN = (
    "lower up_scale or target_fps, use size_policy=exact, shorten the video, or use method=fast"
)


def frames_gib(frames: int, h: int, w: int, out_frames: int, out_h: int, out_w: int) -> float:
    """Host memory of uint8 input frames and the output (twice: result and encoder feed)."""
    return (frames * h * w + 2 * out_frames * out_h * out_w) * 3 / 2**30


def frames_note(gib: float) -> str:
    return f"~{gib:.1f} GiB of frames (input + output)"


def check_ram(need_gib: float, what: str, log: Log = log_line) -> None:
    """Log the need and refuse (EnhanceMemoryError) when RAM has less available."""
    ram = available_memory_gib(torch.device("cpu"))
    log(f"memory: RAM {what}, {ram:.1f} GiB available")
    if need_gib > ram:
        raise EnhanceMemoryError(
            f"this run needs {what} in RAM, but only {ram:.1f} GiB is available: {SMALLER_RUN}"
        )


def check_output_frames(out_frames: int, device: torch.device) -> None:
    """Refuse outputs longer than the cap (a lower one on CPU)."""
    if out_frames > MAX_OUTPUT_FRAMES:
        raise ValueError(
            f"the output would have {out_frames} frames; at most {MAX_OUTPUT_FRAMES} are made: "
            "lower target_fps or trim the video"
        )
    if device.type == "cpu" and out_frames > CPU_MAX_OUTPUT_FRAMES:
        raise ValueError(
            f"the output would have {out_frames} frames; on CPU at most {CPU_MAX_OUTPUT_FRAMES} "
            "are made (CPU runs are for tests): lower target_fps or trim the video"
        )


def check_fast_output(
    models: FastModels,
    frames: int,
    h: int,
    w: int,
    up_scale: float,
    factor: int,
    log: Log,
    name: str = "up_scale",
) -> tuple[int, int, int]:
    """(frames, height, width) of a fast-path output, refused when over the caps or the RAM."""
    up = models.upscaler
    if up_scale > up.scale:
        raise ValueError(
            f"{name}={up_scale:g} is not allowed on the fast path: its Real-ESRGAN model "
            f"upscales x{up.scale} at most"
        )
    oh, ow = scaled_size(h, w, up_scale) if up_scale != 1 else (h, w)
    out_frames = (frames - 1) * factor + 1
    check_output_frames(out_frames, up.device)
    cpu = up.device.type == "cpu"
    cap = CPU_MAX_FAST_PIXELS if cpu else MAX_FAST_OUTPUT_PIXELS
    if oh * ow > cap:
        raise ValueError(
            f"{name}={up_scale:g} makes {ow}x{oh} frames; at most {cap / 1e6:.1f} MP per frame "
            f"are made{' on CPU' if cpu else ''}: lower {name}"
        )
    native = h * w * up.scale**2
    if up_scale != 1 and native > NATIVE_OVER_OUTPUT * cap:
        raise ValueError(
            f"{name}={up_scale:g} runs Real-ESRGAN x{up.scale} on {w}x{h} frames, "
            f"{native / 1e6:.0f} MP each before the resize; at most "
            f"{NATIVE_OVER_OUTPUT * cap / 1e6:.0f} MP are run{' on CPU' if cpu else ''}: "
            f"downscale the video first, or use {name}=1"
        )
    need = frames_gib(frames, h, w, out_frames, oh, ow)
    check_ram(need, frames_note(need), log)
    return out_frames, oh, ow
