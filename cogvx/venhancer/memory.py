"""Working memory of a VEnhancer run beyond its weights (an estimate, stated as one in logs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Working memory of a VEnhancer run beyond its weights, in bytes. Counted from the code's
# buffers and the block layout, not measured on a GPU (none here); stated as estimates in logs.
# Sampling: the UNet's and the ControlNet's 12 skip tensors each (~5.4 x width channels at full
# latent resolution, summed over levels) plus the working tensors of one block: ~15 x width.
SAMPLE_CHANNELS_PER_WIDTH = 15
LATENT_COPIES = 8  # x, noised start, denoised, previous denoised, noise, chunk outputs, hint...
# VAE: full-resolution decoder/encoder tensors carry 2 x the first width (the x2 upsample conv);
# about 4 are alive at once, over the 5 frames of a decode window or one encoded frame.
VAE_CHANNELS_PER_WIDTH = 8


@dataclass(frozen=True)
class WorkingSet:
    """Estimated peak working memory (GiB) of the three phases of a VEnhancer run."""

    encode_gib: float
    sample_gib: float
    decode_gib: float

    @property
    def peak_gib(self) -> float:
        return max(self.encode_gib, self.sample_gib, self.decode_gib)

    def describe(self) -> str:
        return (
            f"~{self.peak_gib:.1f} GiB working memory (estimate: encode {self.encode_gib:.1f}, "
            f"sampling {self.sample_gib:.1f}, decode {self.decode_gib:.1f})"
        )


def venhancer_working_set(
    plan: Any, unet_width: int, vae_width: int, dtype_bytes: int
) -> WorkingSet:
    """Estimate for an arith.Plan; widths are the UNet's and VAE's first block channels."""
    from cogvx.venhancer import arith

    _, frames, lh, lw = plan.latent_shape
    latent_px = lh * lw
    pixels = plan.padded_h * plan.padded_w
    chunk = max(b - a for a, b in plan.chunks)
    latents = LATENT_COPIES * arith.LATENT_CHANNELS * frames * latent_px * 4
    vae_work = VAE_CHANNELS_PER_WIDTH * vae_width * 4
    # encode: every resized, padded input frame in fp32 (list + cat), one frame through the VAE
    encode = 2 * 12 * plan.in_frames * pixels + vae_work * pixels + latents
    sample = SAMPLE_CHANNELS_PER_WIDTH * unet_width * chunk * latent_px * dtype_bytes + latents
    # decode: fp32 output + weights and their uint8 conversion (~3 frame-sized fp32 copies), one
    # tile column of decoded windows twice (pieces + blend), the VAE on one 5-frame tile
    tile_px = min(pixels, arith.DECODE_TILE_H * arith.DECODE_TILE_W * arith.VAE_FACTOR**2)
    decode = (
        3 * 12 * frames * pixels
        + 2 * 12 * frames * tile_px
        + vae_work * arith.DECODE_FRAMES * tile_px
        + latents
    )
    return WorkingSet(encode / 2**30, sample / 2**30, decode / 2**30)
