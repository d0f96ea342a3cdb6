"""Input images: real files of every awkward kind, the size rule and the three fits."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import Image

from cogvx import images
from cogvx.images import derived_size, describe_fit, fit_image, load_image
from cogvx.models import get_variant
from cogvx.services.video import fit_input_image


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def _logs():
    lines: list[str] = []
    return lines, lines.append


def test_rgb_jpeg_loads_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    path = _save(Image.fromarray(arr), tmp_path / "a.png")
    img = load_image(path, log=lambda _: None)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), arr)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (8, 6), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    lines, log = _logs()
    img = load_image(_save(rgba, tmp_path / "a.png"), log=log)
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (255, 255, 255) and img.getpixel((0, 0)) == (0, 0, 255)
    assert "converted RGBA to 8-bit RGB" in lines[0]


def test_palette_with_transparency_and_cmyk_convert(tmp_path):
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.info["transparency"] = 0
    assert load_image(_save(p, tmp_path / "p.png"), log=lambda _: None).getpixel((0, 0)) == (
        10,
        200,
        30,
    )
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = load_image(_save(cmyk, tmp_path / "c.jpg"), log=lambda _: None).getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_16_bit_images_are_rescaled_not_clipped(tmp_path):
    g16 = tmp_path / "g16.png"
    arr = np.full((6, 8), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(arr).save(g16)
    assert Image.open(g16).mode.startswith("I")
    assert load_image(g16, log=lambda _: None).getpixel((0, 0)) == (128, 128, 128)
    rgb48 = tmp_path / "rgb48.png"
    raw = np.tile(np.array([0x3333, 0x6666, 0x9999], ">u2"), (8, 16, 1)).tobytes()
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb48be",
         "-s", "16x8", "-i", "-", "-frames", "1", "-pix_fmt", "rgb48be", str(rgb48)],
        input=raw, check=True,
    )  # fmt: skip
    assert load_image(rgb48, log=lambda _: None).getpixel((3, 3)) == (0x33, 0x66, 0x99)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(img, tmp_path / "r.jpg", exif=exif)
    assert load_image(path, log=lambda _: None).size == (20, 40)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    lines, log = _logs()
    r, g, _ = load_image(path, log=log).getpixel((2, 2))
    assert r > 200 and g < 50
    assert any("animated (2 frames); using its first frame" in x for x in lines)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is an empty file"),
        (b"%PDF-1.4 not an image at all" * 10, "is not an image this server can read"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "damaged or truncated|not an image"),
    ],
)
def test_bad_files_raise_value_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        load_image(path, log=lambda _: None)
    assert "upload.png" in str(err.value)


def test_huge_images_are_refused_before_decoding(tmp_path, monkeypatch):
    path = _save(Image.new("L", (300, 200)), tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 50_000)
    with pytest.raises(ValueError, match=r"is 300x200 .*the limit is 0 MP"):
        load_image(path, log=lambda _: None)


def test_truncated_jpeg_is_reported(tmp_path):
    arr = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = _save(Image.fromarray(arr), tmp_path / "full.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        load_image(cut, log=lambda _: None)


@pytest.mark.parametrize(
    ("w", "h", "want"),
    [
        (1920, 1080, (1360, 768)),  # 16:9 reaches the cap
        (1080, 1920, (768, 1360)),  # portrait keeps its orientation
        (1000, 1000, (768, 768)),
        (1024, 768, (1024, 768)),  # 4:3
        (3000, 1000, (1360, 768)),  # wider than the cap: cropped/padded by the fit
        (768, 1010, (768, 1008)),  # 1010 -> nearest multiple of 16
    ],
)
def test_size_rule_follows_aspect_ratio(w, h, want):
    assert derived_size(w, h, 768, 1360, 16) == want


def test_tiny_folder_scales_the_rule(tmp_path):
    (tmp_path / "cogvx.json").write_text('{"height": 64, "width": 96}')
    v = get_variant("i2v-1.5").with_folder_overrides(tmp_path)
    assert (v.min_side, v.max_side, v.size_multiple) == (64, 112, 16)
    assert get_variant("i2v-5b").with_folder_overrides(tmp_path).min_side is None


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
def test_fits_give_the_exact_size(mode):
    img = Image.new("RGB", (300, 400), (200, 10, 10))
    out = fit_image(img, 96, 64, mode)
    assert out.size == (96, 64)
    corner = out.getpixel((0, 32))
    assert (corner == (0, 0, 0)) == (mode == "pad")  # pad leaves black bars at the sides


def test_crop_keeps_the_centre():
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[:, 40:60] = 255  # a white vertical band in the middle
    out = np.asarray(fit_image(Image.fromarray(arr), 20, 40, "crop"))
    assert out[:, 8:12].min() > 200 and out[:, :2].max() < 30


def test_portrait_image_on_a_landscape_only_model_is_fitted_and_logged(tmp_path):
    path = _save(Image.new("RGB", (300, 400), (0, 200, 0)), tmp_path / "p.png")
    lines, log = _logs()
    img = fit_input_image(path, get_variant("i2v-5b"), "crop", log)
    assert img.size == (720, 480)
    assert (
        "300x400 -> 720x480 (crop); the image is portrait but the output is landscape"
        in (lines[-1])
    )
    with pytest.raises(ValueError, match=r"image_fit='zoom' is not allowed"):
        fit_input_image(path, get_variant("i2v-5b"), "zoom", log)


def test_describe_fit_mentions_pad_and_stretch():
    assert "black bars" in describe_fit((300, 400), (96, 64), "pad")
    assert "distorted" in describe_fit((300, 400), (96, 64), "stretch")
    assert describe_fit((96, 64), (96, 64), "crop") == "96x64 -> 96x64 (crop)"
