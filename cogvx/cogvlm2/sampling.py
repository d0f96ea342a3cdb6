"""Which frames of a video CogVLM2-Caption sees (the original demo's selection rule)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STRATEGIES = ("chat", "base")
BASE_CLIP_SECONDS = 60


def sample_frame_indices(
    num_frames_total: int,
    fps: float,
    strategy: str = "chat",
    max_frames: int = 24,
    timestamps: Sequence[float] | np.ndarray | None = None,
) -> list[int]:
    """Frame indices to decode, in order (duplicates possible for 'base' on short clips).

    'chat': for each whole second s = 0 .. round(last timestamp), the frame whose timestamp is
    nearest to s (the earliest on ties), stopping at `max_frames`. Timestamps default to i / fps;
    pass the container's per-frame start times to follow a variable frame rate exactly. Times are
    compared in float32, as decord returns them to the original demo.
    'base': `max_frames` indices spread evenly (floored) over the first 60 s.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: {strategy!r} is not one of {list(STRATEGIES)}")
    if isinstance(num_frames_total, bool) or int(num_frames_total) != num_frames_total:
        raise ValueError(f"num_frames_total: {num_frames_total!r} is not an integer")
    if num_frames_total < 1:
        raise ValueError(f"num_frames_total: {num_frames_total} is not >= 1")
    if not fps > 0 or not np.isfinite(fps):
        raise ValueError(f"fps: {fps} is not a positive finite number")
    if int(max_frames) != max_frames or max_frames < 1:
        raise ValueError(f"max_frames: {max_frames} is not an integer >= 1")
    num_frames_total, max_frames = int(num_frames_total), int(max_frames)

    if strategy == "base":
        end_frame = min(num_frames_total, max(1, int(BASE_CLIP_SECONDS * fps)))  # fps < 1/60: 1
        return np.linspace(0, end_frame - 1, max_frames, dtype=int).tolist()

    if timestamps is None:
        times = (np.arange(num_frames_total, dtype=np.float64) / float(fps)).astype(np.float32)
    else:
        times = np.asarray(timestamps, dtype=np.float32)
        if times.shape != (num_frames_total,):
            raise ValueError(
                f"timestamps: {times.shape[0] if times.ndim == 1 else times.shape} values "
                f"for {num_frames_total} frames"
            )
    seconds = min(round(float(times.max())) + 1, max_frames)
    return [int(np.argmin(np.abs(times - np.float32(s)))) for s in range(seconds)]
