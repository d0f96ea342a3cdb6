"""RIFE frame interpolation: our IFNet in the RIFE HDv3 layout that CogVideoX's demo loads.

`load_ifnet(path)` reads the released flownet.pkl (weights only, "module." stripped) strictly;
`interpolate(model, frames, factor)` inserts factor-1 frames between neighbours (8 -> 16 fps at 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cogvx.fast.upscale import StateDictError, check_uint8_frames, load_state_dict_file, to_uint8

RELEASED_WIDTH = 90  # channels of every IFBlock in the released HDv3 flownet
SCALE_LIST = (4, 2, 1)  # coarse-to-fine downscale of the three IFBlocks (divided by `scale`)
PAD_MULTIPLE = 32  # frames are padded (right/bottom, zeros) to max(32, 32/scale)
FACTORS = (1, 2, 4, 8, 16)  # midpoints only (HDv3 has no timestep input): powers of two


class RifeWeightsError(StateDictError):
    """A flownet state dict does not match the IFNet layout (names the key)."""


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.PReLU(cout))


def _up_head(width: int, cout: int) -> nn.Sequential:
    """Two transposed convs (x4 in all) back to the block's input resolution."""
    return nn.Sequential(
        nn.ConvTranspose2d(width, width // 2, 4, 2, 1),
        nn.PReLU(width // 2),
        nn.ConvTranspose2d(width // 2, cout, 4, 2, 1),
    )


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    if factor == 1:
        return x
    return F.interpolate(
        x, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )


class IFBlock(nn.Module):
    """One refinement level: features at 1/(4*scale) size -> residual flow (4ch) and mask (1ch)."""

    def __init__(self, in_channels: int, width: int = RELEASED_WIDTH) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, width // 2, 2), _conv(width // 2, width, 2))
        for i in range(4):
            self.add_module(
                f"convblock{i}", nn.Sequential(_conv(width, width), _conv(width, width))
            )
        self.conv1 = _up_head(width, 4)
        self.conv2 = _up_head(width, 1)

    def forward(
        self, x: torch.Tensor, flow: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual (flow, mask logit) at full resolution for input x and current flow."""
        x = _resize(x, 1.0 / scale)
        flow = _resize(flow, 1.0 / scale) / scale
        feat = self.conv0(torch.cat((x, flow), 1))
        for i in range(4):
            feat = getattr(self, f"convblock{i}")(feat) + feat
        return _resize(self.conv1(feat), scale) * scale, _resize(self.conv2(feat), scale)


def _swap(flow: torch.Tensor) -> torch.Tensor:
    """Exchange the two flows (t->0 and t->1) held in channels 0:2 and 2:4."""
    return torch.cat((flow[:, 2:4], flow[:, :2]), 1)


_GRIDS: dict[tuple, torch.Tensor] = {}  # the sampling grids of the sizes in use
MAX_GRIDS = 8  # a request's pyramid levels; a new request's sizes replace them


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out[y, x] = image[y + flow_y, x + flow_x] (bilinear, border-clamped).

    Flow is in pixels (B,2,H,W); sampling runs in fp32 (fp16 grids are off by pixels at 2K).
    """
    b, _, h, w = flow.shape
    key = (flow.device, h, w)
    if key not in _GRIDS:
        if len(_GRIDS) >= MAX_GRIDS:  # other sizes' grids: up to 134 MB each at 4096^2
            _GRIDS.clear()
        gx = torch.linspace(-1.0, 1.0, w, device=flow.device).view(1, 1, w).expand(1, h, w)
        gy = torch.linspace(-1.0, 1.0, h, device=flow.device).view(1, h, 1).expand(1, h, w)
        _GRIDS[key] = torch.stack((gx, gy), -1)
    norm = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=flow.device).clamp(min=0.5)
    grid = _GRIDS[key] + flow.float().permute(0, 2, 3, 1) / norm
    out = F.grid_sample(
        image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.to(image.dtype)


def merge(
    img0: torch.Tensor, img1: torch.Tensor, flow: torch.Tensor, mask_logit: torch.Tensor
) -> torch.Tensor:
    """Middle frame: warp each side by its flow and blend with sigmoid(mask) (1 = all img0)."""
    mask = torch.sigmoid(mask_logit)
    return warp(img0, flow[:, :2]) * mask + warp(img1, flow[:, 2:4]) * (1 - mask)


class IFNet(nn.Module):
    """RIFE HDv3 flow network: three IFBlocks run on both frame orders and averaged.

    `block_tea` is the training-time teacher; it is kept only so the released file loads strictly.
    """

    def __init__(self, width: int = RELEASED_WIDTH) -> None:
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"width={width} is not allowed; use an even number >= 2")
        self.width = width
        self.block0 = IFBlock(7 + 4, width)
        self.block1 = IFBlock(7 + 4, width)
        self.block2 = IFBlock(7 + 4, width)
        self.block_tea = IFBlock(10 + 4, width)

    def flow_and_mask(
        self, img0: torch.Tensor, img1: torch.Tensor, scale: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flows (B,4,H,W: middle->img0, middle->img1) and mask logit (B,1,H,W)."""
        b, _, h, w = img0.shape
        flow = img0.new_zeros(b, 4, h, w)
        mask = img0.new_zeros(b, 1, h, w)
        warped0, warped1 = img0, img1
        for block, level in zip((self.block0, self.block1, self.block2), SCALE_LIST, strict=True):
            f0, m0 = block(torch.cat((warped0, warped1, mask), 1), flow, level / scale)
            f1, m1 = block(torch.cat((warped1, warped0, -mask), 1), _swap(flow), level / scale)
            flow = flow + (f0 + _swap(f1)) / 2
            mask = mask + (m0 - m1) / 2
            warped0, warped1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
        return flow, mask

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """The frame halfway between img0 and img1 (B,3,H,W in [0,1], H and W padded)."""
        flow, mask = self.flow_and_mask(img0, img1, scale)
        return merge(img0, img1, flow, mask)


def ifnet_from_state_dict(
    state_dict: dict[str, torch.Tensor],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    source: str = "state dict",
) -> IFNet:
    """Build an IFNet of the stored width and load the state dict strictly (eval mode)."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    probe = "block0.conv0.0.0.weight"
    if probe not in sd:
        raise RifeWeightsError(f"{source}: missing key {probe!r}; not a RIFE HDv3 flownet")
    model = IFNet(width=2 * sd[probe].shape[0])
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    if missing or extra:
        raise RifeWeightsError(
            f"{source}: does not match IFNet (RIFE HDv3, width {model.width}): "
            f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected keys {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for key, ref in expected.items():
        if sd[key].shape != ref.shape:
            raise RifeWeightsError(
                f"{source}: key {key!r} has shape {tuple(sd[key].shape)},"
                f" expected {tuple(ref.shape)}"
            )
    model.load_state_dict(sd, strict=True)
    dev = torch.device(device) if device is not None else _default_device()
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype {dtype} is not allowed; use float32, float16 or bfloat16")
    return model.to(dev, dtype).eval().requires_grad_(False)


def load_ifnet(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> IFNet:
    """Load a flownet.pkl (weights-only torch pickle) or .safetensors into an IFNet, strictly."""
    return ifnet_from_state_dict(load_state_dict_file(path), device, dtype, source=str(path))


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pad_multiple(scale: float) -> int:
    """Padding multiple for a given inference scale (0.5 for 4K halves the flow resolution)."""
    return max(PAD_MULTIPLE, int(PAD_MULTIPLE / scale))


def _midpoints(
    model: IFNet, a: torch.Tensor, b: torch.Tensor, levels: int, scale: float
) -> list[torch.Tensor]:
    """2**levels - 1 frames between a and b, in time order, by recursive halving."""
    mid = model(a, b, scale)
    if levels == 1:
        return [mid]
    return [
        *_midpoints(model, a, mid, levels - 1, scale),
        mid,
        *_midpoints(model, mid, b, levels - 1, scale),
    ]


@torch.inference_mode()
def interpolate(
    model: IFNet,
    frames: np.ndarray,
    factor: int = 2,
    scale: float = 1.0,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """uint8 frames (T,H,W,3) -> ((T-1)*factor+1,H,W,3); inputs stay at multiples of `factor`.

    `scale` < 1 estimates flow at lower resolution (0.5 for 4K); `batch_size` frame pairs a pass.
    """
    frames = check_uint8_frames(frames)
    if factor not in FACTORS:
        raise ValueError(f"factor={factor} is not allowed; use one of {FACTORS}")
    if scale not in (0.25, 0.5, 1.0, 2.0, 4.0):
        raise ValueError(f"scale={scale} is not allowed; use one of (0.25, 0.5, 1.0, 2.0, 4.0)")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} is not allowed; use 1 or more")
    t, h, w, _ = frames.shape
    out = np.empty(((t - 1) * factor + 1, h, w, 3), dtype=np.uint8)
    out[::factor] = frames
    if factor == 1 or t == 1:
        return out
    levels = factor.bit_length() - 1
    param = next(model.parameters())
    m = pad_multiple(scale)
    pad = (0, -w % m, 0, -h % m)
    pairs = t - 1
    for i in range(0, pairs, batch_size):
        n = min(batch_size, pairs - i)
        chunk = torch.from_numpy(frames[i : i + n + 1]).to(param.device)
        images = F.pad(chunk.permute(0, 3, 1, 2).to(param.dtype) / 255.0, pad)
        mids = _midpoints(model, images[:-1], images[1:], levels, scale)
        for k, mid in enumerate(mids, start=1):
            out[i * factor + k : (i + n) * factor : factor] = to_uint8(mid[:, :, :h, :w])
        if progress is not None:
            progress(i + n, pairs)
    return out
