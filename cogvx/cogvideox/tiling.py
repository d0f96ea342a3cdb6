"""When diffusers' CogVideoX VAE tiling keeps the frame size (pure arithmetic, no tensors).

`AutoencoderKLCogVideoX` tiles when a side exceeds its tile, steps by `tile * (1 - overlap)` and
keeps `tile - blend` of each piece. With the released tile (240x360 pixels, 30x45 latents) every
size the models make comes out right; with a tile that does not fit the size (a tiny test model's
16x24) the pieces overlap less than they step and the frame grows (48x32 decoded as 56x50).
`tiling_fits` replays that arithmetic, so tiling is turned on only where it keeps the size.
"""

from __future__ import annotations

from typing import Any

SPATIAL = 8  # pixels per latent on each side


def tiled_length(length: int, tile: int, overlap: float, piece_tile: int, scale: float) -> int:
    """Length along one axis after tiled coding: `length` input units, tiles of `tile` input
    units stepped by int(tile * (1 - overlap)); each piece is scaled by `scale` and cut to
    `piece_tile - int(piece_tile * overlap)` output units."""
    stride = int(tile * (1 - overlap))
    limit = piece_tile - int(piece_tile * overlap)
    if stride <= 0:
        raise ValueError(f"tile {tile} with overlap {overlap} has no stride")
    return sum(min(limit, int(min(tile, length - i) * scale)) for i in range(0, length, stride))


def decoded_size(vae: Any, latent_h: int, latent_w: int) -> tuple[int, int]:
    """(height, width) in pixels that `vae.decode` makes of latents this size, tiling on."""
    if not (latent_w > vae.tile_latent_min_width or latent_h > vae.tile_latent_min_height):
        return latent_h * SPATIAL, latent_w * SPATIAL  # below one tile: decoded whole
    h = tiled_length(
        latent_h, vae.tile_latent_min_height, vae.tile_overlap_factor_height,
        vae.tile_sample_min_height, SPATIAL,
    )  # fmt: skip
    w = tiled_length(
        latent_w, vae.tile_latent_min_width, vae.tile_overlap_factor_width,
        vae.tile_sample_min_width, SPATIAL,
    )  # fmt: skip
    return h, w


def encoded_size(vae: Any, height: int, width: int) -> tuple[int, int]:
    """(height, width) in latents that `vae.encode` makes of frames this size, tiling on."""
    if not (width > vae.tile_sample_min_width or height > vae.tile_sample_min_height):
        return height // SPATIAL, width // SPATIAL
    h = tiled_length(
        height, vae.tile_sample_min_height, vae.tile_overlap_factor_height,
        vae.tile_latent_min_height, 1 / SPATIAL,
    )  # fmt: skip
    w = tiled_length(
        width, vae.tile_sample_min_width, vae.tile_overlap_factor_width,
        vae.tile_latent_min_width, 1 / SPATIAL,
    )  # fmt: skip
    return h, w


def tiling_fits(vae: Any, height: int, width: int) -> bool:
    """True when tiled encoding and decoding of `height` x `width` frames keep every size."""
    lh, lw = height // SPATIAL, width // SPATIAL
    return encoded_size(vae, height, width) == (lh, lw) and decoded_size(vae, lh, lw) == (
        height,
        width,
    )


def set_tiling(vae: Any, wanted: bool, height: int, width: int, log: Any) -> bool:
    """Turn the VAE's tiling on when the memory plan wants it and it keeps the size; else off.

    Returns whether tiling is on for this request (and logs when the size forbids it)."""
    on = wanted and tiling_fits(vae, height, width)
    if on:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
        if wanted:
            log(
                f"VAE tiling off for {width}x{height}: its {vae.tile_sample_min_width}x"
                f"{vae.tile_sample_min_height} tiles would change the frame size"
            )
    return on
