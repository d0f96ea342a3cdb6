"""Fast upscaling: Real-ESRGAN (RRDBNet or SRVGGNetCompact) through spandrel, tiled with blending.

`load_upscaler(path)` reads a .pth (weights only) or .safetensors state dict and lets spandrel pick
the architecture; `upscale_frames(upscaler, frames)` maps uint8 (T,H,W,3) to uint8 (T,sH,sW,3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cogvx.errors import StateDictError
from cogvx.weights.tensors import load_state_dict, plain_state_dict

UPSCALER_KINDS = ("compact", "rrdb")
SUPPORTED_ARCHS = ("ESRGAN", "Compact")  # spandrel ids of RRDBNet and SRVGGNetCompact
DEFAULT_TILE = 512  # CogVideoX's demo: tiles of 512 input pixels, 32 of overlap
DEFAULT_OVERLAP = 32


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors on CPU (see `cogvx.weights.tensors.load_state_dict`)."""
    return load_state_dict(path)


@dataclass
class Upscaler:
    """A loaded spandrel image model with the device and dtype it runs in."""

    descriptor: Any  # spandrel.ImageModelDescriptor (spandrel ships no type information)
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        """Upscaling factor (1, 2 or 4 for Real-ESRGAN)."""
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        """spandrel's architecture id: "ESRGAN" (RRDBNet) or "Compact" (SRVGGNetCompact)."""
        return str(self.descriptor.architecture.id)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float images (B,3,H,W) in [0,1] on the model's device and dtype -> (B,3,sH,sW)."""
        return self.descriptor(images)


def default_dtype(device: torch.device, supports_half: bool = True) -> torch.dtype:
    """fp16 on CUDA (bf16 if the model can't take fp16), fp32 on CPU."""
    if device.type != "cuda":
        return torch.float32
    return torch.float16 if supports_half else torch.bfloat16


def upscaler_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    source: str = "state dict",
) -> Upscaler:
    """Let spandrel detect RRDBNet / SRVGGNetCompact from the keys and build it in eval mode."""
    import spandrel

    sd = plain_state_dict(state_dict, source, error=StateDictError)
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError as e:
        raise StateDictError(
            f"{source}: not a Real-ESRGAN model (keys start {sorted(sd)[:3]}); supported"
            f" architectures: {SUPPORTED_ARCHS}"
        ) from e
    arch = descriptor.architecture.id
    if arch not in SUPPORTED_ARCHS or not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise StateDictError(
            f"{source}: spandrel detected {arch!r}; supported architectures: {SUPPORTED_ARCHS}"
        )
    dev = torch.device(device) if device is not None else _default_device()
    if dtype is None:
        dtype = default_dtype(dev, descriptor.supports_half)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype} is not allowed; use float32, float16 or bfloat16")
    descriptor.to(dev).eval()
    descriptor.model.to(dtype)
    return Upscaler(descriptor, dev, dtype)


def load_upscaler(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Upscaler:
    """Load a Real-ESRGAN weights file (.pth weights-only, or .safetensors) through spandrel."""
    return upscaler_from_state_dict(load_state_dict_file(path), device, dtype, source=str(path))


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets covering `length` with `tile` pixels, neighbours sharing >= `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _edge_ramp(size: int, ramp: int, left: bool, right: bool) -> torch.Tensor:
    """1-D blend weight of one tile: 0 in the outer quarter of each shared edge, then linear to 1.

    The zero margin drops the pixels a tile computed next to its cut (wrong border context); two
    neighbours overlapping by exactly `ramp` get complementary weights.
    """
    w = torch.ones(size)
    if ramp <= 0:
        return w
    margin = ramp // 4
    pos = torch.arange(size, dtype=torch.float32) + 0.5
    rise = ((pos - margin) / (ramp - 2 * margin)).clamp(0, 1)
    if left:
        w = torch.minimum(w, rise)
    if right:
        w = torch.minimum(w, rise.flip(0))
    return w


@torch.inference_mode()
def upscale_tensor(
    upscaler: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scale: int,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
) -> torch.Tensor:
    """Tiled upscaling of float images (B,3,H,W) -> float32 (B,3,sH,sW), blending the overlaps."""
    if tile < 8:
        raise ValueError(f"tile={tile} is not allowed; use at least 8 pixels")
    if not 0 <= 2 * overlap < tile:
        raise ValueError(
            f"overlap={overlap} is not allowed with tile={tile}; use 0 <= 2*overlap < tile"
        )
    b, _, h, w = images.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    if len(ys) == 1 and len(xs) == 1:
        return upscaler(images).float()
    out = torch.zeros(b, 3, h * scale, w * scale, device=images.device)
    weight = torch.zeros(1, 1, h * scale, w * scale, device=images.device)
    ramp = overlap * scale
    for y in ys:
        th = min(tile, h - y)
        wy = _edge_ramp(th * scale, ramp, y > 0, y + th < h)
        for x in xs:
            tw = min(tile, w - x)
            wx = _edge_ramp(tw * scale, ramp, x > 0, x + tw < w)
            mask = (wy[:, None] * wx[None, :]).to(images.device)
            pred = upscaler(images[:, :, y : y + th, x : x + tw]).float()
            ry, rx = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            out[:, :, ry, rx] += pred * mask
            weight[:, :, ry, rx] += mask
    return out / weight


def upscale_frames(
    upscaler: Upscaler,
    frames: np.ndarray,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Upscale uint8 frames (T,H,W,3) by the model's scale -> uint8 (T,sH,sW,3).

    Frames go through the model `batch_size` at a time; `progress(done, total)` after each batch.
    """
    frames = check_uint8_frames(frames)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; use 1 or more")
    t, h, w, _ = frames.shape
    s = upscaler.scale
    out = np.empty((t, h * s, w * s, 3), dtype=np.uint8)
    for i in range(0, t, batch_size):
        chunk = torch.from_numpy(frames[i : i + batch_size]).to(upscaler.device)
        images = chunk.permute(0, 3, 1, 2).to(upscaler.dtype) / 255.0
        result = upscale_tensor(upscaler, images, s, tile, overlap)
        out[i : i + batch_size] = to_uint8(result)
        if progress is not None:
            progress(min(i + batch_size, t), t)
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float (B,3,H,W) in [0,1] -> uint8 numpy (B,H,W,3), rounded."""
    scaled = (images.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def check_uint8_frames(frames: np.ndarray) -> np.ndarray:
    """Validate uint8 (T,H,W,3) frames (numpy or torch) and return a contiguous numpy array."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames: got {frames.dtype} array of shape {frames.shape}; expected uint8 (T,H,W,3)"
        )
    if frames.shape[0] == 0 or frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"frames: shape {frames.shape} is empty or smaller than 2x2 pixels")
    return np.ascontiguousarray(frames)
