"""Video-to-video input: frames at the model's frame rate, a count it accepts, fitted to size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cogvx.video import probe_video, read_frames, refuse_larger_frames

Log = Callable[[str], None]
MAX_SOURCE_PIXELS = 4096 * 4096  # per frame; larger streams are refused before decoding


@dataclass(frozen=True)
class FramePlan:
    """Which source frames to use and why."""

    indices: list[int]
    note: str


def plan_frames(
    timestamps: Sequence[float] | np.ndarray, model_fps: float, allowed: Sequence[int]
) -> FramePlan:
    """Sample at `model_fps` (nearest frame) and keep the largest allowed count from the start.

    A clip too short for that uses consecutive frames at its own rate instead.
    """
    times = np.asarray(timestamps, dtype=np.float64)
    allowed = sorted(allowed)
    if len(times) == 0:
        raise ValueError("video: it holds no frames")
    # at most max(allowed) samples are used: a timestamp far in the future cannot size the array
    targets = np.arange(allowed[-1], dtype=np.float64) * (1.0 / model_fps)
    targets = targets[targets < times[-1] + 0.5 / model_fps]
    idx = np.clip(np.searchsorted(times, targets), 0, len(times) - 1)
    prev = np.clip(idx - 1, 0, len(times) - 1)
    nearest = np.where(np.abs(times[prev] - targets) <= np.abs(times[idx] - targets), prev, idx)
    fits = [n for n in allowed if n <= len(nearest)]
    if fits:
        n = fits[-1]
        src_fps = (len(times) - 1) / times[-1] if times[-1] > 0 else model_fps
        return FramePlan(
            [int(i) for i in nearest[:n]],
            f"sampled at {model_fps:g} fps from {src_fps:.3g} fps: {n} frames "
            f"({n / model_fps:.2f}s of the video)",
        )
    fits = [n for n in allowed if n <= len(times)]
    if not fits:
        raise ValueError(
            f"video is too short: {len(times)} frames ({times[-1]:.2f}s); this model needs "
            f"at least {allowed[0]} frames ({allowed[0] / model_fps:.2f}s at {model_fps:g} fps)"
        )
    n = fits[-1]
    return FramePlan(
        list(range(n)),
        f"the video is shorter than {allowed[0]} frames at {model_fps:g} fps: using its first "
        f"{n} consecutive frames (motion plays faster)",
    )


def cover_size(src: tuple[int, int], dst: tuple[int, int]) -> tuple[int, int]:
    """Smallest (w, h) with the source's aspect ratio that covers `dst`."""
    (sw, sh), (dw, dh) = src, dst
    scale = max(dw / sw, dh / sh)
    return max(dw, round(sw * scale)), max(dh, round(sh * scale))


def load_video(
    path: str | Path,
    width: int,
    height: int,
    model_fps: float,
    allowed: Sequence[int],
    log: Log = print,
) -> np.ndarray:
    """(T, height, width, 3) uint8 frames for video-to-video: sampled, counted, centre-cropped."""
    path = Path(path)
    scan = max(allowed) / model_fps + 1.0
    info = probe_video(path, scan_seconds=scan)
    refuse_larger_frames(info, MAX_SOURCE_PIXELS)
    plan = plan_frames(info.timestamps, model_fps, allowed)
    cw, ch = cover_size((info.width, info.height), (width, height))
    frames = read_frames(path, plan.indices, info=info, size=(cw, ch))
    x0, y0 = (cw - width) // 2, (ch - height) // 2
    frames = np.ascontiguousarray(frames[:, y0 : y0 + height, x0 : x0 + width])
    cut = "" if (cw, ch) == (width, height) else f", centre-cropped from {cw}x{ch}"
    log(
        f"video: {info.width}x{info.height} {info.codec} at {info.fps:.3g} fps; {plan.note}; "
        f"resized to {width}x{height}{cut}"
    )
    return frames
