"""Video-to-video input size: common shapes scale to cover then crop (as before); thin strips are
cut to their centre before they are scaled; aspect ratios over 32:1 are refused."""

from __future__ import annotations

import av
import numpy as np
import pytest

from cogvx.checks import MAX_ASPECT
from cogvx.cogvideox import v2v
from cogvx.cogvideox.v2v import MAX_READ_FACTOR, cover_size, load_video, plan_fit
from cogvx.errors import InputError
from cogvx.video import bitexact_scaling, probe_video, read_frames
from tests.support.e2e import make_video

COUNTS = [9, 17, 25]  # the 1.0 models' first frame counts; 9 frames at 8 fps = 1.1 s


def _clip(tmp_path, size: str):
    path = tmp_path / f"clip-{size}.mp4"
    make_video(path, 1.2, fps=8, size=size)
    return path


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ((1920, 1080), (720, 480)),  # 16:9
        ((640, 480), (720, 480)),  # 4:3
        ((1080, 1920), (1360, 768)),  # 9:16 portrait on 1.5: 3.1x the output's pixels
        ((1080, 2520), (1360, 768)),  # 9:21 portrait on 1.5: 4.1x
        ((2560, 1080), (720, 480)),  # 21:9
        ((4096, 4096), (1360, 768)),
        ((48, 32), (48, 32)),
    ],
)
def test_common_shapes_are_scaled_to_cover_then_cropped(src, dst):
    fit = plan_fit(src, dst)
    cw, ch = cover_size(src, dst)
    assert fit.read == (cw, ch) and not fit.scales_after_cut
    assert fit.box == ((cw - dst[0]) // 2, (ch - dst[1]) // 2, *dst)


@pytest.mark.parametrize(
    ("src", "dst", "box"),
    [
        ((4000, 16), (720, 480), (24, 16)),  # covered as 120000x480 before
        ((512, 16), (720, 480), (24, 16)),
        ((16, 512), (1360, 768), (16, 9)),
        ((8000, 256), (1360, 768), (453, 256)),
        ((16384, 1024), (720, 480), (540, 360)),  # 16 MP: decoded smaller, within the bound
        ((2, 64), (720, 480), (2, 1)),
    ],
)
def test_far_wider_or_taller_frames_are_cut_first_within_the_bound(src, dst, box):
    fit = plan_fit(src, dst)
    rw, rh = fit.read
    assert rw * rh <= MAX_READ_FACTOR * dst[0] * dst[1] * 1.01  # rounding to whole pixels
    assert rw <= src[0] and rh <= src[1]  # never scaled up before the cut
    x0, y0, bw, bh = fit.box
    assert (bw, bh) == box and fit.scales_after_cut
    assert (x0, y0) == ((rw - bw) // 2, (rh - bh) // 2)  # centred


def _area(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    scaled = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
        width=size[0], height=size[1], format="rgb24",
        interpolation=bitexact_scaling("AREA", accurate_rounding=False),
    )  # fmt: skip
    return scaled.to_ndarray()


def test_a_thin_strip_is_decoded_at_its_own_size_and_its_centre_scaled(tmp_path, monkeypatch):
    """512x16 -> 720x480: the old path decoded every frame at 15360x480 (7.4 MP), 21x the
    output; now the 24x16 centre of the 512x16 frames is what gets scaled."""
    clip = _clip(tmp_path, "512x16")
    sizes: list[tuple[int, int] | None] = []

    def recording(*args, **kwargs):  # the real reader; only the size it is asked for is noted
        sizes.append(kwargs.get("size"))
        return read_frames(*args, **kwargs)

    monkeypatch.setattr(v2v, "read_frames", recording)
    lines: list[str] = []
    frames = load_video(clip, 720, 480, 8, COUNTS, log=lines.append)
    assert sizes == [(512, 16)]
    assert frames.shape == (9, 480, 720, 3)
    assert "resized to 720x480 from its centre 24x16 (of 512x16)" in lines[0]
    info = probe_video(clip)
    source = read_frames(clip, range(9), info=info)
    expected = np.stack([_area(f[:, 244:268], (720, 480)) for f in source])
    assert np.array_equal(frames, expected)


def test_a_common_shape_gives_the_scale_then_crop_pixels(tmp_path):
    """A 160x120 clip (the e2e tests' shape) keeps exactly the pixels of scaling to cover."""
    clip = _clip(tmp_path, "160x120")
    frames = load_video(clip, 48, 32, 8, COUNTS, log=lambda _: None)
    info = probe_video(clip)
    covered = read_frames(clip, range(9), info=info, size=(48, 36))
    assert np.array_equal(frames, covered[:, 2:34])


@pytest.mark.parametrize("size", ["4000x16", "16x600"])
def test_an_aspect_ratio_over_32_to_1_is_refused(tmp_path, size):
    clip = _clip(tmp_path, size)
    w, h = size.split("x")
    with pytest.raises(InputError, match=rf"{w}x{h} has an aspect ratio above {MAX_ASPECT:g}:1"):
        load_video(clip, 720, 480, 8, COUNTS, log=lambda _: None)
