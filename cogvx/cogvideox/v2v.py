"""Video-to-video input: frames at the model's frame rate, a count it accepts, fitted to size."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cogvx import checks
from cogvx.log import clip
from cogvx.video import bitexact_scaling, probe_video, read_frames, refuse_larger_frames

Log = Callable[[str], None]
MAX_SOURCE_PIXELS = 4096 * 4096  # per frame; larger streams are refused before decoding
# Frames are decoded at most at this many times the output's pixels. Scaling to cover the output
# and cropping (the path of every common shape: 16:9, 4:3, 21:9 and 9:16 need at most 3.2x,
# 9:21 portrait on 1.5 4.2x) is kept; a frame whose cover would be larger has its centre cut
# first (a 4000x16 strip covered 720x480 as 120000x480: 3.1 GB for 9 frames).
MAX_READ_FACTOR = 6


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


@dataclass(frozen=True)
class Fit:
    """How source frames become the output size: decode at `read`, cut `box`, scale to `dst`."""

    read: tuple[int, int]  # (w, h) the decoder scales each frame to
    box: tuple[int, int, int, int]  # (x0, y0, w, h) of the centre cut, in `read` pixels
    dst: tuple[int, int]

    @property
    def scales_after_cut(self) -> bool:
        return self.box[2:] != self.dst


def plan_fit(
    src: tuple[int, int], dst: tuple[int, int], max_factor: float = MAX_READ_FACTOR
) -> Fit:
    """Scale to cover `dst` and centre-crop, unless that cover exceeds `max_factor` x dst's
    pixels: then decode at most at the source size (and `max_factor` x dst), cut the centre
    box of dst's shape there, and scale only that box to `dst`."""
    (sw, sh), (dw, dh) = src, dst
    cw, ch = cover_size(src, dst)
    budget = max_factor * dw * dh
    if cw * ch <= budget:
        return Fit((cw, ch), ((cw - dw) // 2, (ch - dh) // 2, dw, dh), dst)
    s = min(max(dw / sw, dh / sh), 1.0, (budget / (sw * sh)) ** 0.5)
    rw, rh = max(1, round(sw * s)), max(1, round(sh * s))
    if rw * dh > dw * rh:  # wider than dst: the full height, dst's aspect ratio across
        bw, bh = min(rw, max(1, round(rh * dw / dh))), rh
    else:
        bw, bh = rw, min(rh, max(1, round(rw * dh / dw)))
    return Fit((rw, rh), ((rw - bw) // 2, (rh - bh) // 2, bw, bh), dst)


def _scale(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, h, w, 3) uint8 -> (T, size[1], size[0], 3) with the reader's bit-exact area filter."""
    import av

    area = bitexact_scaling("AREA", accurate_rounding=False)
    out = np.empty((len(frames), size[1], size[0], 3), np.uint8)
    for i, frame in enumerate(frames):
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        scaled = rgb.reformat(
            width=size[0], height=size[1], format="rgb24", interpolation=area, threads=1
        )
        out[i] = scaled.to_ndarray()
    return out


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
    checks.aspect_ratio(f"video {clip(path.name)}", info.width, info.height)
    plan = plan_frames(info.timestamps, model_fps, allowed)
    fit = plan_fit((info.width, info.height), (width, height))
    frames = read_frames(path, plan.indices, info=info, size=fit.read)
    x0, y0, bw, bh = fit.box
    frames = np.ascontiguousarray(frames[:, y0 : y0 + bh, x0 : x0 + bw])
    rw, rh = fit.read
    if fit.scales_after_cut:
        frames = _scale(frames, (width, height))
        cut = f" from its centre {bw}x{bh} (of {rw}x{rh}), centre-cropped before scaling"
    else:
        cut = "" if fit.read == (width, height) else f", centre-cropped from {rw}x{rh}"
    log(
        f"video: {info.width}x{info.height} {info.codec} at {info.fps:.3g} fps; {plan.note}; "
        f"resized to {width}x{height}{cut}"
    )
    return frames
