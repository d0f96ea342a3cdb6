"""Frame preprocessing exactly as the original CogVLM2-Caption transform.

Order: /255 -> CLIP mean/std -> bilinear short-side resize (no antialias) -> center crop.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_video_tensor(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate frames and return a uint8 (C=3, T, H, W) CPU tensor.

    Accepts a torch uint8 tensor (3, T, H, W) or a numpy uint8 array (T, H, W, 3).
    """
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: numpy shape {frames.shape} is not (T, H, W, 3)")
        if frames.dtype != np.uint8:
            raise ValueError(f"frames: numpy dtype {frames.dtype} is not uint8")
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)
    elif isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[0] != 3:
            raise ValueError(f"frames: tensor shape {tuple(frames.shape)} is not (3, T, H, W)")
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames: tensor dtype {frames.dtype} is not torch.uint8")
        video = frames.cpu()
    else:
        raise ValueError(
            f"frames: got {type(frames).__name__}; expected a torch uint8 tensor (3, T, H, W) "
            "or a numpy uint8 array (T, H, W, 3)"
        )
    if min(video.shape[1:]) < 1:
        raise ValueError(f"frames: empty video of shape (C, T, H, W) = {tuple(video.shape)}")
    return video


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (h, w) of the short-side resize, rounding the long side down like the original."""
    if width < height:
        return int(math.floor((float(height) / width) * size)), size
    return size, int(math.floor((float(width) / height) * size))


def preprocess_frames(frames: torch.Tensor | np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 frames -> float32 pixels (T, 3, image_size, image_size) on CPU.

    Frames are processed one at a time (the same arithmetic as the whole clip) to bound memory.
    """
    video = to_video_tensor(frames)
    _, t, h, w = video.shape
    new_h, new_w = short_side_size(h, w, image_size)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1, 1)
    out = torch.empty(t, 3, image_size, image_size, dtype=torch.float32)
    for i in range(t):
        x = video[:, i : i + 1].to(torch.float32) / 255.0
        x = (x - mean) / std
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        out[i] = x[:, 0, top : top + image_size, left : left + image_size]
    return out
