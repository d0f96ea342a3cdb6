"""VEnhancer's base UNet: diffusers' UNet3DConditionModel with the original's two resampling quirks.

The released UNet (ModelScope T2V layout) maps onto UNet3DConditionModel key for key, except that
its Downsample pads (2, 1) and its Upsample crops one row top and bottom after nearest x2. Both
are patched here in place, so latent heights must be 8k+2 (the pipeline pads to that).
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from diffusers import UNet3DConditionModel
from diffusers.models.upsampling import Upsample2D

# The released VEnhancer UNet (1.41 B parameters) in diffusers' terms.
RELEASED_CONFIG: dict = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
}
DOWNSAMPLE_PADDING = (2, 1)
M = TypeVar("M", bound=torch.nn.Module)


class CroppedUpsample2D(Upsample2D):
    """Nearest x2, then drop the first and last row, then the 3x3 conv: (H, W) -> (2H-2, 2W)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        return self.conv(x[..., 1:-1, :])


def patch_resampling(unet: M) -> M:
    """Give every Downsample2D conv padding (2, 1) and swap Upsample2D for CroppedUpsample2D.

    Works on a UNet3DConditionModel or a VideoControlNet, before or after loading weights.
    """
    for block in list(getattr(unet, "down_blocks", [])):
        for down in block.downsamplers or []:
            down.conv.padding = DOWNSAMPLE_PADDING
    for block in list(getattr(unet, "up_blocks", [])):
        ups = block.upsamplers or []
        for i, up in enumerate(ups):
            if isinstance(up, CroppedUpsample2D):
                continue
            new = CroppedUpsample2D(up.channels, use_conv=True, out_channels=up.out_channels)
            new.conv = up.conv
            ups[i] = new
    return unet


def build_unet(config: dict | None = None) -> UNet3DConditionModel:
    """A patched UNet3DConditionModel (random weights) for `config` (default: the released one)."""
    return patch_resampling(UNet3DConditionModel(**(config or RELEASED_CONFIG)))


def check_latent_size(height: int, width: int, levels: int = 4) -> None:
    """Raise ValueError unless a latent of this size survives the patched down/up sampling."""
    h = height
    for _ in range(levels - 1):
        if h % 2:
            break
        h = (h + 1) // 2 + 1
    else:
        if width % (2 ** (levels - 1)) == 0:
            return
    raise ValueError(
        f"latent size {height}x{width} is not allowed: the height must be 8k+2 and the width a "
        f"multiple of {2 ** (levels - 1)} (pad the frames with arith.pad_to_fit)"
    )
