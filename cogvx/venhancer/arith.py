"""Resolution, frame-rate, padding and chunk arithmetic of VEnhancer (matches the original exactly).

All sizes are in pixels unless a name says `latent`. The VAE downsamples by 8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_INTERP = 8  # at most 8 frames inserted between two input frames
BEST_H, BEST_W = 720, 1280  # the size the model was trained at; smaller inputs are padded up to it
MIN_AREA = BEST_H * BEST_W * 1.5  # target areas below this are scaled up to it
MAX_AREA = 1152 * 2048  # target areas above this are scaled down to it
CHUNK_FRAMES = 32  # sampling runs on windows of at most ~32 output frames
DEFAULT_CHUNK_OVERLAP = 16  # the original overlap (half a chunk)
VAE_FACTOR = 8
LATENT_CHANNELS = 4
# Tiled temporal VAE decode: tiles of 576x1024 pixels, overlaps 1/6 and 1/5, 5 frames overlapping 2.
DECODE_TILE_H, DECODE_TILE_W = 576 // VAE_FACTOR, 1024 // VAE_FACTOR
DECODE_OVERLAP_H, DECODE_OVERLAP_W = int(576 / 6) // VAE_FACTOR, int(1024 / 5) // VAE_FACTOR
DECODE_FRAMES, DECODE_OVERLAP_FRAMES = 5, int(5 * 0.5)


def interp_count(in_fps: float, target_fps: float) -> int:
    """Frames inserted between two input frames: round(target/in) - 1 clamped to [0, 8].

    Python's round (halves to even) is what the original uses: 8 -> 30 fps gives 3 (32 fps).
    """
    if not in_fps > 0:
        raise ValueError(f"input fps must be > 0; got {in_fps}")
    if not target_fps > 0:
        raise ValueError(f"target_fps must be > 0; got {target_fps}")
    return min(max(round(target_fps / in_fps) - 1, 0), MAX_INTERP)


def adjust_resolution(h: int, w: int, up_scale: float) -> tuple[int, int]:
    """Target (height, width): `up_scale` unless the area leaves [1.5x 720p, 1152x2048].

    Out-of-range areas are rescaled to the bound, so `up_scale` is often ignored (the original
    rule). Sides are floored to even numbers.
    """
    if not up_scale > 0:
        raise ValueError(f"up_scale must be > 0; got {up_scale}")
    if h * w * up_scale * up_scale < MIN_AREA:
        up_scale = math.sqrt(MIN_AREA / (h * w))
    elif h * w * up_scale * up_scale > MAX_AREA:
        up_scale = math.sqrt(MAX_AREA / (h * w))
    return int(up_scale * h // 2 * 2), int(up_scale * w // 2 * 2)


def _centred(size: int, best: int) -> tuple[int, int]:
    before = (best - size) // 2
    return before, best - before - size


def pad_to_fit(h: int, w: int) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) that makes a frame a size the UNet accepts.

    Below 720x1280 a side is centred in 720/1280; above, it is padded at the end so the latent
    height is 8k+2 and the latent width a multiple of 8 (a full extra 64 px when already aligned).
    """
    if h < BEST_H:
        top, bottom = _centred(h, BEST_H)
    elif h == BEST_H:
        top = bottom = 0
    else:
        top, bottom = 0, (h + 48) // 64 * 64 + 16 - h
    if w < BEST_W:
        left, right = _centred(w, BEST_W)
    elif w == BEST_W:
        left = right = 0
    else:
        left, right = 0, w // 64 * 64 + 64 - w
    return left, right, top, bottom


SIZE_POLICIES = ("original", "exact")


def pad_minimal(h: int, w: int) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) to the nearest size the UNet accepts (64k+16 x 64k)."""
    padded_h = max(0, -(-(h - 16) // 64)) * 64 + 16
    return 0, -(-w // 64) * 64 - w, 0, padded_h - h


def exact_resolution(h: int, w: int, up_scale: float) -> tuple[int, int]:
    """Target (height, width) = up_scale x input, floored to even (no area clamp)."""
    if not up_scale > 0:
        raise ValueError(f"up_scale must be > 0; got {up_scale}")
    return int(up_scale * h // 2 * 2), int(up_scale * w // 2 * 2)


def mask_cond(in_frames: int, interp: int) -> list[int]:
    """Per output frame: the key-frame index it copies, or -1 for an interpolated frame."""
    out: list[int] = []
    for i in range(in_frames):
        out.append(i)
        if i != in_frames - 1:
            out += [-1] * interp
    return out


def sliding_windows(size: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows with stride window-overlap; the last one runs to the end.

    A window stops the walk as soon as it, or a window ~1.33x longer, reaches `size`, so the
    last window can be up to ~1.33x `window` long.
    """
    stride = window - overlap
    if stride <= 0:
        raise ValueError(f"window overlap {overlap} must be smaller than the window {window}")
    start, out = 0, []
    while start < size:
        if start + round(window * 1.33) >= size or start + window >= size:
            out.append((start, size))
            break
        out.append((start, start + window))
        start += stride
    return out


def chunk_lengths(interp: int, overlap: int = DEFAULT_CHUNK_OVERLAP) -> tuple[int, int]:
    """(chunk, overlap) in output frames, both 1 more than a multiple of interp+1."""
    if not 1 <= overlap <= DEFAULT_CHUNK_OVERLAP:
        raise ValueError(f"chunk_overlap must be in [1, {DEFAULT_CHUNK_OVERLAP}]; got {overlap}")
    k = interp + 1
    return (CHUNK_FRAMES - 1) // k * k + 1, (overlap - 1) // k * k + 1


def make_chunks(
    frames: int, interp: int, overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[tuple[int, int]]:
    """Sampling windows over the output frames; a single window when frames <= 32."""
    if frames <= CHUNK_FRAMES:
        return [(0, frames)]
    chunk, o_len = chunk_lengths(interp, overlap)
    return sliding_windows(frames, chunk, o_len)


def decode_tiles(
    frames: int,
    latent_h: int,
    latent_w: int,
    tile: tuple[int, int] = (DECODE_TILE_H, DECODE_TILE_W),
    overlap: tuple[int, int] = (DECODE_OVERLAP_H, DECODE_OVERLAP_W),
    frame_window: tuple[int, int] = (DECODE_FRAMES, DECODE_OVERLAP_FRAMES),
) -> list[tuple[slice, slice, slice]]:
    """(frames, height, width) latent slices of the tiled temporal VAE decode, tile by tile.

    Defaults are the original's: 72x128 latent tiles overlapping 12x25, 5 frames overlapping 2.
    """
    tiles = []
    for h0, h1 in sliding_windows(latent_h, tile[0], overlap[0]):
        for w0, w1 in sliding_windows(latent_w, tile[1], overlap[1]):
            for f0, f1 in sliding_windows(frames, *frame_window):
                tiles.append((slice(f0, f1), slice(h0, h1), slice(w0, w1)))
    return tiles


@dataclass(frozen=True)
class Plan:
    """Everything the pipeline derives from the input size, fps and the user's choices."""

    in_frames: int
    in_fps: float
    in_h: int
    in_w: int
    interp: int
    out_fps: float
    target_h: int
    target_w: int
    padding: tuple[int, int, int, int]  # left, right, top, bottom
    chunks: tuple[tuple[int, int], ...]

    @property
    def out_frames(self) -> int:
        return self.in_frames + (self.in_frames - 1) * self.interp

    @property
    def padded_h(self) -> int:
        return self.target_h + self.padding[2] + self.padding[3]

    @property
    def padded_w(self) -> int:
        return self.target_w + self.padding[0] + self.padding[1]

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(channels, frames, height, width) of the sampled latent."""
        return (
            LATENT_CHANNELS,
            self.out_frames,
            self.padded_h // VAE_FACTOR,
            self.padded_w // VAE_FACTOR,
        )

    @property
    def mask_cond(self) -> list[int]:
        return mask_cond(self.in_frames, self.interp)

    @property
    def key_frame_positions(self) -> list[int]:
        return list(range(0, self.out_frames, self.interp + 1))

    @property
    def evaluated_frames(self) -> int:
        """Latent frames the UNet sees per solver step and pass (overlaps count twice)."""
        return sum(b - a for a, b in self.chunks)


def make_plan(
    in_frames: int,
    in_fps: float,
    in_h: int,
    in_w: int,
    up_scale: float,
    target_fps: float,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    size_policy: str = "original",
) -> Plan:
    """The arithmetic for one input; chunk_overlap 16 and size_policy 'original' are the original.

    size_policy 'exact' honours up_scale (no area clamp) and pads only to the nearest size the
    UNet accepts instead of to 720x1280: cheaper for small outputs, off the training sizes.
    """
    if size_policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {SIZE_POLICIES}; got {size_policy!r}")
    if in_frames < 2:
        raise ValueError(f"the input video needs at least 2 frames; got {in_frames}")
    if in_h < 2 or in_w < 2:
        raise ValueError(f"input frames must be at least 2x2 pixels; got {in_h}x{in_w}")
    interp = interp_count(in_fps, target_fps)
    if size_policy == "original":
        target_h, target_w = adjust_resolution(in_h, in_w, up_scale)
        padding = pad_to_fit(target_h, target_w)
    else:
        target_h, target_w = exact_resolution(in_h, in_w, up_scale)
        padding = pad_minimal(target_h, target_w)
    if target_h < 2 or target_w < 2:
        raise ValueError(f"up_scale {up_scale} makes a {target_h}x{target_w} output")
    out_frames = in_frames + (in_frames - 1) * interp
    return Plan(
        in_frames=in_frames,
        in_fps=in_fps,
        in_h=in_h,
        in_w=in_w,
        interp=interp,
        out_fps=in_fps * (interp + 1),
        target_h=target_h,
        target_w=target_w,
        padding=padding,
        chunks=tuple(make_chunks(out_frames, interp, chunk_overlap)),
    )
