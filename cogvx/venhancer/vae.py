"""VAE plumbing for VEnhancer: per-frame encode and the original's tiled temporal decode.

The VAE is diffusers' AutoencoderKLTemporalDecoder (Stable Video Diffusion's): frames are encoded
one by one, latents decoded in 5-frame windows (the temporal decoder needs a few frames) with
spatial tiles blended by Gaussian weights and time windows cross-faded.
"""

from __future__ import annotations

import math
from itertools import groupby

import numpy as np
import torch
from diffusers import AutoencoderKLTemporalDecoder

from cogvx.venhancer import arith
from cogvx.venhancer.sampler import blend_chunks


def gaussian_weights(width: int, height: int) -> np.ndarray:
    """(height, width) tile weights of the original (var 0.02; y midpoint h/2, x (w-1)/2)."""
    var = 0.02

    def bump(n: int, mid: float) -> np.ndarray:
        i = np.arange(n)
        return np.exp(-((i - mid) ** 2) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)

    return np.outer(bump(height, height / 2), bump(width, (width - 1) / 2))


@torch.no_grad()
def encode_frames(
    vae: AutoencoderKLTemporalDecoder,
    frames: torch.Tensor,
    repeats: int = 1,
    generator: torch.Generator | None = None,
    batch: int = 1,
) -> torch.Tensor:
    """Scaled latents (1,4,F,h,w) of frames (N,3,H,W) in [-1, 1], each but the last repeated.

    The original encodes every repeated frame anew, drawing fresh posterior noise each time;
    here each frame is encoded once and the posterior sampled per output frame (same law).
    """
    n = frames.shape[0]
    means, stds = [], []
    for i in range(0, n, batch):
        dist = vae.encode(frames[i : i + batch].to(vae.dtype)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    counts = torch.full((n,), repeats, device=frames.device)
    counts[-1] = 1
    mean = torch.cat(means).repeat_interleave(counts, dim=0)
    std = torch.cat(stds).repeat_interleave(counts, dim=0)
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    z = (mean + std * eps) * vae.config.scaling_factor
    return z.permute(1, 0, 2, 3).unsqueeze(0)


@torch.no_grad()
def tiled_decode(
    vae: AutoencoderKLTemporalDecoder,
    z: torch.Tensor,
    tile: tuple[int, int] = (arith.DECODE_TILE_H, arith.DECODE_TILE_W),
    overlap: tuple[int, int] = (arith.DECODE_OVERLAP_H, arith.DECODE_OVERLAP_W),
    frame_window: tuple[int, int] = (arith.DECODE_FRAMES, arith.DECODE_OVERLAP_FRAMES),
) -> torch.Tensor:
    """Frames (B,3,F,8h,8w) in about [-1, 1] from scaled latents (B,4,F,h,w), tile by tile."""
    b, _, f, h, w = z.shape
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    out = torch.zeros(b, 3, f, h * scale, w * scale, device=z.device, dtype=torch.float32)
    count = torch.zeros(1, 1, 1, h * scale, w * scale, device=z.device, dtype=torch.float32)
    tiles = arith.decode_tiles(f, h, w, tile, overlap, frame_window)
    for (hs, ws), group in groupby(tiles, key=lambda t: (t[1], t[2])):
        pieces = []
        for fs, _, _ in group:
            piece = z[:, :, fs, hs, ws].permute(0, 2, 1, 3, 4).flatten(0, 1)
            n = fs.stop - fs.start
            img = vae.decode(piece.to(vae.dtype) / vae.config.scaling_factor, num_frames=n).sample
            pieces.append(img.float().unflatten(0, (b, n)).permute(0, 2, 1, 3, 4))
        video = blend_chunks(pieces, frame_window[1])
        weights_np = gaussian_weights(video.shape[-1], video.shape[-2])
        weights = torch.tensor(weights_np, dtype=out.dtype, device=out.device)
        ph = slice(hs.start * scale, hs.stop * scale)
        pw = slice(ws.start * scale, ws.stop * scale)
        out[..., ph, pw] += video * weights
        count[..., ph, pw] += weights
    return out / count
