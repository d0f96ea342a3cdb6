"""Input images: open safely, convert any mode to 8-bit RGB, pick the output size, fit to it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cogvx.log import clip

FIT_MODES = ("crop", "pad", "stretch")
MAX_PIXELS = 80_000_000  # 80 MP: a 48 MP phone photo passes, a decompression bomb does not
PAD_COLOR = (0, 0, 0)
ALPHA_BACKGROUND = (255, 255, 255)
# Pillow decoders tried on an input; others (EPS runs Ghostscript, PSD, ICO, PDF...) are refused.
# JPEG covers MPO (phone photos); GIF and WebP may be animated (the first frame is used).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
Log = Callable[[str], None]


def load_image(path: str | Path, log: Log = print, name: str = "image") -> Image.Image:
    """Open an image file as 8-bit RGB (EXIF rotation applied); ValueError says what is wrong."""
    path = Path(path)
    what = f"{name} {path.name!r}"
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ValueError(f"{what} could not be read: {e}") from None
    if size == 0:
        raise ValueError(f"{what} is an empty file (0 bytes); send a PNG, JPEG or WebP image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(path, formats=IMAGE_FORMATS)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ValueError(
                    f"{what} is {w}x{h} ({w * h / 1e6:.0f} MP); the limit is "
                    f"{MAX_PIXELS / 1e6:.0f} MP: downscale it first"
                )
            if w == 0 or h == 0:
                raise ValueError(f"{what} has zero size ({w}x{h})")
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                log(
                    f"{name}: {clip(path.name)} is animated ({frames} frames); "
                    "using its first frame"
                )
                img.seek(0)
            img.load()
    except ValueError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(
            f"{what} has more than {MAX_PIXELS / 1e6:.0f} MP (the limit): downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(
            f"{what} is not an image this server can read ({size} bytes); "
            "send a PNG, JPEG, WebP, GIF, BMP or TIFF file"
        ) from None
    except (OSError, SyntaxError) as e:  # truncated or corrupt data
        raise ValueError(f"{what} is damaged or truncated: {e}") from None
    img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img
    try:
        rgb = to_rgb(img)
    except (ValueError, OSError) as e:
        msg = f"{what} uses colour mode {img.mode}, which cannot be converted to RGB: {e}"
        raise ValueError(msg) from None
    log(f"{name}: converted {img.mode} to 8-bit RGB")
    return rgb


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode: 16/32-bit and float rescaled, alpha composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        if mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        gray = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def round_to(x: float, multiple: int) -> int:
    """Nearest multiple of `multiple` (at least one multiple)."""
    return max(multiple, int(round(x / multiple)) * multiple)


def derived_size(
    width: int, height: int, min_side: int, max_side: int, multiple: int
) -> tuple[int, int]:
    """Output (width, height) following the image's aspect ratio within the model's size rule.

    The short side is `min_side`; the long side keeps the aspect ratio, rounded to `multiple`
    and clamped to [min_side, max_side] (wider images are then cropped/padded to fit).
    """
    if min_side % multiple or max_side < min_side:
        raise ValueError(f"bad size rule: min_side={min_side} max_side={max_side} x{multiple}")
    top = max_side - max_side % multiple
    long = min(top, max(min_side, round_to(min_side * max(width, height) / min(width, height),
                                           multiple)))  # fmt: skip
    return (long, min_side) if width >= height else (min_side, long)


def fit_image(img: Image.Image, width: int, height: int, mode: str = "crop") -> Image.Image:
    """Resize `img` to exactly width x height: crop (cover, centre), pad (contain) or stretch."""
    if mode not in FIT_MODES:
        raise ValueError(f"image_fit={mode!r} is not allowed; choose one of {list(FIT_MODES)}")
    if img.size == (width, height):
        return img
    if mode == "stretch":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    if mode == "crop":
        return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS)
    return ImageOps.pad(img, (width, height), Image.Resampling.LANCZOS, color=PAD_COLOR)


def describe_fit(src: tuple[int, int], dst: tuple[int, int], mode: str) -> str:
    """One log line saying how an image of size `src` was fitted to `dst`."""
    (sw, sh), (dw, dh) = src, dst
    line = f"{sw}x{sh} -> {dw}x{dh} ({mode})"
    src_portrait, dst_portrait = sh > sw, dh > dw
    if src_portrait != dst_portrait and sw != sh:
        have = "portrait" if src_portrait else "landscape"
        want = "portrait" if dst_portrait else "landscape"
        line += f"; the image is {have} but the output is {want}"
        if mode == "crop":
            line += (
                ": its top and bottom are cut off" if src_portrait else ": its sides are cut off"
            )
        elif mode == "pad":
            line += ": black bars fill the rest"
        else:
            line += ": it is distorted"
    elif abs(sw / sh - dw / dh) > 0.01 and mode != "stretch":
        line += "; aspect ratios differ: " + ("edges cropped" if mode == "crop" else "padded")
    return line


def pil_frames_from_array(frames: np.ndarray) -> list[Image.Image]:
    """(T, H, W, 3) uint8 -> list of PIL RGB images."""
    return [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
