"""The video writer, checked with ffprobe: codec, pixel format, frame count, fps, duration."""

import numpy as np
import pytest

from cogvx.video import fresh_output_path, to_uint8_frames, write_video
from tests.support.media import ffprobe, mp4_atoms


def _frames(t=49, h=48, w=80):
    """Smooth gradients with a moving square: content a video encoder sees in practice."""
    y, x = np.mgrid[0:h, 0:w]
    frames = np.zeros((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        frames[i, ..., 0] = (x * 255 // max(w - 1, 1) + 3 * i) % 256
        frames[i, ..., 1] = y * 255 // max(h - 1, 1)
        frames[i, ..., 2] = 128
        frames[i, 8:20, (2 * i) % (w - 12) : (2 * i) % (w - 12) + 12] = 255
    return frames


def test_mp4_is_h264_yuv420p_faststart(tmp_path):
    path = write_video(_frames(), tmp_path / "a.mp4", fps=8)
    info = ffprobe(path)
    assert (info["codec"], info["pix_fmt"]) == ("h264", "yuv420p")
    assert (info["width"], info["height"], info["frames"], info["fps"]) == (80, 48, 49, 8.0)
    assert info["duration"] == pytest.approx(49 / 8, abs=0.01)
    atoms = mp4_atoms(path)
    assert atoms.index("moov") < atoms.index("mdat")


def test_mp4_quality_keeps_pixels_close(tmp_path):
    import av

    frames = _frames(t=9)
    path = write_video(frames, tmp_path / "q.mp4", fps=8, quality=100)
    with av.open(str(path)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    mse = np.mean((decoded.astype(float) - frames.astype(float)) ** 2)
    psnr = 10 * np.log10(255**2 / mse)
    assert psnr > 28, psnr  # sharp edges + 4:2:0 chroma cap it near 32 dB


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "vp9"), ("gif", "gif")])
def test_other_formats(tmp_path, fmt, codec):
    path = write_video(_frames(t=17), tmp_path / f"a.{fmt}", fps=16, fmt=fmt)
    info = ffprobe(path)
    assert info["codec"] == codec
    assert info["frames"] == 17
    assert info["duration"] == pytest.approx(17 / 16, abs=0.07)


def test_odd_sizes_are_cropped_to_even(tmp_path):
    info = ffprobe(write_video(_frames(t=3, h=33, w=51), tmp_path / "o.mp4", fps=8))
    assert (info["width"], info["height"]) == (50, 32)


def test_float_frames_are_scaled_once():
    floats = np.full((2, 4, 4, 3), 0.5, dtype=np.float32)
    assert to_uint8_frames(floats).max() == 128


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"fmt": "avi"},
            r"output_format 'avi' is not allowed; choose one of \['mp4', 'webm', 'gif'\]",
        ),
        ({"quality": 0}, "output_quality must be between 1 and 100"),
        ({"fps": 0}, "fps must be positive"),
    ],
)
def test_bad_arguments_name_the_input(tmp_path, kwargs, message):
    args = {"fps": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_video(_frames(t=2), tmp_path / "x", **args)


def test_fresh_output_path_replaces_older_outputs(tmp_path):
    first = fresh_output_path(tmp_path, "mp4")
    first.write_bytes(b"x")
    second = fresh_output_path(tmp_path, "mp4")
    assert not first.exists() and second.parent.exists()
    assert first.name != second.name and second.suffix == ".mp4"


def test_fresh_output_path_deletes_only_its_own_folders(tmp_path):
    """COGVX_OUTPUT_DIR may be a folder with other things in it: they all survive."""
    (tmp_path / "user.txt").write_text("keep")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"keep")
    (tmp_path / "0123456789ab").mkdir()  # a bare-uid folder (an older layout), not ours now
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x-0123456789ab.mp4").write_bytes(b"keep")
    (tmp_path / "cogvx-0123456789ab").symlink_to(tmp_path / "elsewhere")  # never followed
    first = fresh_output_path(tmp_path, "mp4", stem="cogvideox-1")
    first.write_bytes(b"x")
    (first.parent / "added.txt").write_text("someone put this here")
    second = fresh_output_path(tmp_path, "gif")
    second.write_bytes(b"y")
    third = fresh_output_path(tmp_path, "webm")
    assert not first.exists() and (first.parent / "added.txt").exists()  # its folder stays
    assert not second.parent.exists() and third.parent.is_dir()
    assert (tmp_path / "user.txt").read_text() == "keep"
    assert (tmp_path / "photos" / "a.jpg").exists() and (tmp_path / "0123456789ab").is_dir()
    assert (tmp_path / "elsewhere" / "x-0123456789ab.mp4").exists()
    assert third.parent.name == "cogvx-" + third.stem.rsplit("-", 1)[1]
