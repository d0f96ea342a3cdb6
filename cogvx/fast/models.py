"""The fast path: Real-ESRGAN upscaling and RIFE interpolation of finished frames (no diffusion)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cogvx import settings
from cogvx.errors import CapacityError, EnhanceSetupError
from cogvx.log import log as log_line
from cogvx.settings import FAST_WEIGHTS_ENV
from cogvx.weights import install_model

Log = Callable[[str], None]

FAST_DIR = "fast"
UPSCALER_FILES = ("realesrgan.safetensors", "realesrgan.pth")
RIFE_FILES = ("flownet.safetensors", "flownet.pkl")

RIFE_HALF_SCALE_PIXELS = 2560 * 1440  # above this RIFE estimates flow at half resolution (4K)
FAST_BATCH = 4  # frames per Real-ESRGAN pass


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


@dataclass
class FastModels:
    """Real-ESRGAN (cogvx.fast.upscale.Upscaler) and RIFE (cogvx.fast.rife.IFNet), loaded."""

    upscaler: Any
    rife: Any

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | None = None) -> FastModels:
        """Load `realesrgan.*` and `flownet.*` from one folder (the tarball's `fast/`)."""
        from cogvx.fast.rife import load_ifnet
        from cogvx.fast.upscale import load_upscaler

        folder = Path(folder)
        up, rife = _first_file(folder, UPSCALER_FILES), _first_file(folder, RIFE_FILES)
        if up is None or rife is None:
            raise EnhanceSetupError(
                f"fast-path folder {folder} needs one of {UPSCALER_FILES} and one of {RIFE_FILES}"
                f"; found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}"
            )
        return cls(load_upscaler(up, device=device), load_ifnet(rife, device=device))

    def describe(self) -> str:
        u, width = self.upscaler, self.rife.width
        return f"Real-ESRGAN {u.architecture} x{u.scale} ({u.dtype}), RIFE HDv3 width {width}"


def load_fast_weights(source: str, log: Log = log_line) -> FastModels:
    """Install a fast-path tarball/folder (its root or `fast/` holding the two files) and load."""
    import importlib.util

    missing = [m for m in ("spandrel", "torchvision") if importlib.util.find_spec(m) is None]
    if missing:
        raise EnhanceSetupError(
            f"{FAST_WEIGHTS_ENV} is set, but this image lacks {missing}: add spandrel==0.4.2 and "
            "torchvision==0.29.1 to its requirements (Real-ESRGAN loads through spandrel)"
        )
    folder = install_model(source, "fast", f"{FAST_WEIGHTS_ENV} is empty", log)
    if (folder / FAST_DIR).is_dir():
        folder = folder / FAST_DIR
    t0 = time.perf_counter()
    models = FastModels.from_folder(folder)
    log(f"fast path: loaded {models.describe()} from {folder} in {time.perf_counter() - t0:.1f}s")
    return models


def load_fast_from_env(log: Log = log_line) -> FastModels | None:
    """The fast-path models COGVX_FAST_WEIGHTS names (tarball URL or folder); None when unset."""
    source = settings.fast_weights_source()
    return load_fast_weights(source, log) if source else None


def fast_missing_message(what: str) -> str:
    """Why an output option of the generators is unavailable, and how a deployment enables it."""
    return (
        f"{what} needs the fast-path weights (Real-ESRGAN + RIFE), which this deployment does not "
        f"load: set {FAST_WEIGHTS_ENV} to a tarball URL or folder holding {UPSCALER_FILES[0]} and "
        f"{RIFE_FILES[0]} (see docs/enhance.md), or leave {what} off"
    )


def fast_factor(in_fps: float, target_fps: float) -> int:
    """RIFE's frame factor (a power of two, 1-16) nearest to target_fps / in_fps (ties: lower)."""
    from cogvx.fast.rife import FACTORS

    ratio = target_fps / in_fps
    return min(FACTORS, key=lambda f: (abs(f - ratio), f))


def scaled_size(h: int, w: int, up_scale: float) -> tuple[int, int]:
    """(height, width) x up_scale, rounded to even sides (yuv420p needs them)."""
    return max(2, round(h * up_scale / 2) * 2), max(2, round(w * up_scale / 2) * 2)


def fast_enhance(
    models: FastModels,
    frames: np.ndarray,
    up_scale: float,
    factor: int,
    log: Log = log_line,
) -> np.ndarray:
    """Upscale with Real-ESRGAN (resized to exactly `up_scale`), then RIFE x`factor` in time.

    Upscaling first is the CogVideoX demo's order: RIFE on big frames is far cheaper than
    Real-ESRGAN on the inserted ones. A GPU out of memory is a CapacityError naming the run.
    """
    try:
        return _enhance(models, frames, up_scale, factor, log)
    except torch.OutOfMemoryError as exc:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        t, h, w = np.shape(frames)[:3]
        raise CapacityError(
            f"the GPU ran out of memory on the fast path ({t} frames {w}x{h}, up_scale="
            f"{up_scale:g}, RIFE x{factor}): lower the upscale or the frame rate, or shorten the "
            f"video ({str(exc)[:200]})"
        ) from exc


def _enhance(
    models: FastModels, frames: np.ndarray, up_scale: float, factor: int, log: Log
) -> np.ndarray:
    from cogvx.fast.rife import interpolate
    from cogvx.fast.upscale import check_uint8_frames, to_uint8, upscale_tensor

    frames = check_uint8_frames(frames)
    t, h, w, _ = frames.shape
    up = models.upscaler
    if up_scale > up.scale:
        raise ValueError(
            f"up_scale={up_scale:g} is not allowed on the fast path: its Real-ESRGAN model "
            f"upscales x{up.scale} at most"
        )
    t0 = time.perf_counter()
    if up_scale != 1:
        oh, ow = scaled_size(h, w, up_scale)
        out = np.empty((t, oh, ow, 3), dtype=np.uint8)
        for i in range(0, t, FAST_BATCH):
            x = torch.from_numpy(frames[i : i + FAST_BATCH]).to(up.device)
            x = x.permute(0, 3, 1, 2).to(up.dtype) / 255.0
            y = upscale_tensor(up, x, up.scale)
            if y.shape[-2:] != (oh, ow):
                y = F.interpolate(y, size=(oh, ow), mode="bicubic", antialias=True)
            out[i : i + FAST_BATCH] = to_uint8(y)
        resized = "" if (oh, ow) == (h * up.scale, w * up.scale) else f", resized to {ow}x{oh}"
        log(
            f"fast: Real-ESRGAN x{up.scale} on {t} frames {w}x{h}{resized} in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        frames = out
    if factor > 1:
        t1 = time.perf_counter()
        oh, ow = frames.shape[1:3]
        scale = 0.5 if oh * ow > RIFE_HALF_SCALE_PIXELS else 1.0
        frames = interpolate(models.rife, frames, factor=factor, scale=scale)
        log(
            f"fast: RIFE x{factor} over {t - 1} frame pairs -> {len(frames)} frames "
            f"(flow scale {scale:g}) in {time.perf_counter() - t1:.1f}s"
        )
    return frames
