"""Display matrices (phone portrait video): probe_video and read_frames give upright frames.

The oracle is FFmpeg's own autorotate: the `ffmpeg` CLI (imageio-ffmpeg's, as `ffmpeg_exe`)
decoding the same file to raw RGB. The rotated files are the same bitstream as their source,
remuxed with `-display_rotation` / `-display_hflip` / `-display_vflip` (input options that set
the display matrix; `-c copy`), so both sides decode identical stored frames. PNG in MOV keeps
RGB end to end (no YUV conversion on either side), so those frames must be equal bit for bit;
H.264 (what phones write) goes through swscale's YUV -> RGB on both sides, which can differ by a
few levels across FFmpeg builds and CPUs (see test_video_read.py), so it gets a small tolerance:
a frame turned the wrong way is off by far more.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from cogvx.video import VideoReadError, ffmpeg_exe, probe_video, read_frames

SIZE = (66, 38)  # stored width x height: not square, not a multiple of 16
YUV_MAX_ABS_DIFF = 4  # H.264: the CLI's and PyAV's YUV -> RGB (see the docstring)

# (display options, clockwise turn the probe reports, mirrored). -display_rotation is counter-
# clockwise, as ffprobe prints it: a phone held upright writes -90 (turn 90 clockwise to show).
MATRICES = {
    "ccw90": (["-display_rotation", "90"], 270, False),
    "cw90": (["-display_rotation", "-90"], 90, False),
    "ccw270": (["-display_rotation", "270"], 90, False),
    "180": (["-display_rotation", "180"], 180, False),
    "hflip": (["-display_hflip"], 0, True),
    "vflip": (["-display_vflip"], 180, True),
    "ccw90-hflip": (["-display_rotation", "90", "-display_hflip"], 270, True),
    "ccw90-vflip": (["-display_rotation", "90", "-display_vflip"], 90, True),
    "near90": (["-display_rotation", "89.6"], 270, False),  # FFmpeg rounds to the degree
}


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def autorotated(path: Path, width: int, height: int) -> np.ndarray:
    """The file as the ffmpeg CLI decodes it (autorotate on, its default): (T, H, W, 3) RGB."""
    raw = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path)]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def remux(source: Path, options: list[str], out: Path) -> Path:
    ffmpeg(*options, "-i", str(source), "-c", "copy", str(out))
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Upright 66x38 clips, 9 frames at 8 fps: PNG in MOV (RGB) and H.264 yuv420p in MP4."""
    folder = tmp_path_factory.mktemp("orient")
    src = ["-f", "lavfi", "-i", f"testsrc2=size={SIZE[0]}x{SIZE[1]}:rate=8", "-frames:v", "9"]
    ffmpeg(*src, "-c:v", "png", "-pix_fmt", "rgb24", str(folder / "src.mov"))
    ffmpeg(*src, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-bf", "2", str(folder / "src.mp4"))
    return {"png": folder / "src.mov", "h264": folder / "src.mp4"}


@pytest.mark.parametrize("matrix", MATRICES)
@pytest.mark.parametrize("codec", ["png", "h264"])
def test_frames_equal_ffmpeg_autorotate(sources, tmp_path, codec, matrix):
    options, rotation, mirrored = MATRICES[matrix]
    source = sources[codec]
    path = remux(source, options, tmp_path / f"turned{source.suffix}")
    turned = rotation in (90, 270)
    width, height = SIZE[::-1] if turned else SIZE
    info = probe_video(path)
    assert (info.width, info.height) == (width, height)
    frames = read_frames(path, range(info.num_frames), info=info)
    assert frames.shape == (9, height, width, 3) and frames.flags.c_contiguous
    diff = np.abs(frames.astype(np.int16) - autorotated(path, width, height)).max()
    assert diff <= (0 if codec == "png" else YUV_MAX_ABS_DIFF), diff
    assert (info.rotation, info.mirrored, info.stored_size) == (rotation, mirrored, SIZE)
    # the same stored frames as the source, turned: a turn that changed nothing would pass above
    # only if FFmpeg did not turn either
    upright = read_frames(source, range(9))
    if not turned:
        assert not np.array_equal(frames, upright)
    # one frame alone (the decoder is started afresh) equals the same frame of the full read
    assert np.array_equal(read_frames(path, [5], info=info)[0], frames[5])


def test_a_single_frame_file_is_turned(sources, tmp_path):
    """One frame: it comes out of the decoder only when the probe flushes it."""
    one = tmp_path / "one.mp4"
    ffmpeg("-i", str(sources["h264"]), "-frames:v", "1", "-c", "copy", str(one))
    path = remux(one, ["-display_rotation", "-90"], tmp_path / "one-turned.mp4")
    info = probe_video(path)
    assert info.num_frames == 1 and (info.width, info.height, info.rotation) == (38, 66, 90)
    frame = read_frames(path, [0], info=info)
    assert np.abs(frame.astype(np.int16) - autorotated(path, 38, 66)).max() <= YUV_MAX_ABS_DIFF


@pytest.mark.parametrize("container", ["mkv", "webm"])
def test_matroska_rotation(tmp_path, container):
    """Matroska stores the turn as a projection roll; WebM is VP9 here."""
    src = tmp_path / f"src.{container}"
    codec = ["-c:v", "png", "-pix_fmt", "rgb24"] if container == "mkv" else ["-c:v", "libvpx-vp9"]
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=66x38:rate=8", "-frames:v", "4", *codec, str(src))
    path = remux(src, ["-display_rotation", "-90"], tmp_path / f"turned.{container}")
    info = probe_video(path)
    assert (info.width, info.height, info.rotation) == (38, 66, 90)
    frames = read_frames(path, range(4), info=info)
    tolerance = 0 if container == "mkv" else YUV_MAX_ABS_DIFF
    assert np.abs(frames.astype(np.int16) - autorotated(path, 38, 66)).max() <= tolerance


def test_other_angles_are_refused(sources, tmp_path):
    path = remux(sources["h264"], ["-display_rotation", "45"], tmp_path / "tilted.mp4")
    with pytest.raises(
        VideoReadError, match=r"tilted.mp4: .*turns the picture 315 degrees clockwise"
    ):
        probe_video(path)


def test_scaling_is_in_display_orientation(sources, tmp_path):
    """size= is (width, height) as displayed; the frames are scaled stored, then turned."""
    path = remux(sources["png"], ["-display_rotation", "-90"], tmp_path / "portrait.mov")
    frames = read_frames(path, [0, 4], size=(19, 33))
    assert frames.shape == (2, 33, 19, 3)
    stored = read_frames(sources["png"], [0, 4], size=(33, 19))
    assert np.array_equal(frames, np.rot90(stored, -1, axes=(1, 2)))


def test_upright_copy_reads_the_same(sources, tmp_path):
    """A rotated file and ffmpeg's upright re-encode of it (lossless PNG, no matrix) give the same
    frames, and the same caption clip."""
    from cogvx.services.caption import load_clip

    path = remux(sources["png"], ["-display_rotation", "-90"], tmp_path / "phone.mov")
    upright = tmp_path / "upright.mov"
    ffmpeg("-i", str(path), "-c:v", "png", "-pix_fmt", "rgb24", str(upright))
    assert probe_video(upright).rotation == 0
    assert np.array_equal(read_frames(path, range(9)), read_frames(upright, range(9)))
    turned, plain = load_clip(path, "chat", log=print), load_clip(upright, "chat", log=print)
    assert turned.frames.shape == plain.frames.shape == (2, 66, 38, 3)
    assert np.array_equal(turned.frames, plain.frames)


def test_v2v_crops_a_portrait_video_as_portrait(sources, tmp_path):
    """V2V covers 720x480 from the upright frames: close to the upright copy's result (scaling
    before or after the turn differs by rounding only), not a crop of the sideways frames."""
    from cogvx.cogvideox.v2v import load_video

    path = remux(sources["png"], ["-display_rotation", "-90"], tmp_path / "phone.mov")
    upright = tmp_path / "upright.mov"
    ffmpeg("-i", str(path), "-c:v", "png", "-pix_fmt", "rgb24", str(upright))
    logs: list[str] = []
    turned = load_video(path, 720, 480, 8, [9], log=logs.append)
    plain = load_video(upright, 720, 480, 8, [9], log=print)
    assert turned.shape == plain.shape == (9, 480, 720, 3)
    assert "video: 38x66" in logs[-1]
    assert np.abs(turned.astype(np.int16) - plain).mean() < 2.0
