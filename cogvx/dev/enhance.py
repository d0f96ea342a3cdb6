"""Tiny random weights for the enhance image: Real-ESRGAN and RIFE state dicts, the tarball folder.

Test and tool code only (tools/make_tiny_weights.py, tests); the serving path never imports it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from cogvx.dev.venhancer import save_tiny_venhancer
from cogvx.fast.models import FAST_DIR, RIFE_FILES, UPSCALER_FILES
from cogvx.fast.rife import IFNet
from cogvx.fast.upscale import UPSCALER_KINDS
from cogvx.services.enhance import VENHANCER_DIR


def _conv(sd: dict, name: str, cin: int, cout: int, gen: torch.Generator, k: int = 3) -> None:
    """Random conv weight/bias with a fan-in scaled init (keeps activations in range)."""
    std = 1.0 / math.sqrt(cin * k * k)
    sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * std
    sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.01


def tiny_realesrgan_state_dict(
    kind: str = "compact", scale: int = 4, width: int = 8, depth: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random Real-ESRGAN state dict in the released key layout at tiny width, for tests.

    kind "compact": SRVGGNetCompact (body.N), `depth` body convs; "rrdb": RRDBNet (conv_first,
    body.N.rdbK.convJ, conv_up1/2, conv_hr, conv_last) with `depth` RRDB blocks, 32 growth
    channels as released (x2 / x1 use pixel-unshuffled input, as RealESRGAN_x2plus).
    """
    if kind not in UPSCALER_KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; use one of {UPSCALER_KINDS}")
    if scale not in (1, 2, 4) or width < 1 or depth < 1:
        raise ValueError(f"scale={scale}, width={width}, depth={depth}: need scale 1|2|4, >= 1")
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    if kind == "compact":
        _conv(sd, "body.0", 3, width, gen)
        sd["body.1.weight"] = torch.full((width,), 0.25)
        for i in range(depth):
            _conv(sd, f"body.{2 + 2 * i}", width, width, gen)
            sd[f"body.{3 + 2 * i}.weight"] = torch.full((width,), 0.25)
        _conv(sd, f"body.{2 + 2 * depth}", width, 3 * scale * scale, gen)
        return sd
    grow = 32  # RRDBNet's num_grow_ch; spandrel builds RRDBs with 32
    _conv(sd, "conv_first", 3 * (4 // scale) ** 2, width, gen)
    for b in range(depth):
        for r in (1, 2, 3):
            for j in range(1, 5):
                _conv(sd, f"body.{b}.rdb{r}.conv{j}", width + (j - 1) * grow, grow, gen)
            _conv(sd, f"body.{b}.rdb{r}.conv5", width + 4 * grow, width, gen)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(sd, name, width, width, gen)
    _conv(sd, "conv_last", width, 3, gen)
    return sd


def tiny_ifnet_state_dict(width: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random IFNet state dict with the released key layout at `width` channels, for tests."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = IFNet(width)
    return {k: v.clone() for k, v in model.state_dict().items()}


def save_tiny_enhance_weights(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random enhance folder in the tarball layout (VEnhancer + fast path, ~3 MB)."""
    out = Path(out_dir)
    save_tiny_venhancer(out / VENHANCER_DIR, seed=seed)
    (out / FAST_DIR).mkdir(parents=True, exist_ok=True)
    sd = tiny_realesrgan_state_dict("compact", scale=4, seed=seed)
    save_file(sd, str(out / FAST_DIR / UPSCALER_FILES[0]))
    save_file(tiny_ifnet_state_dict(seed=seed), str(out / FAST_DIR / RIFE_FILES[0]))
    return out
