"""The video codec allow-list (cogvx.video.VIDEO_CODECS): what reads and what is refused.

Every file is encoded here with PyAV (the pinned wheel's FFmpeg has an encoder for each codec
on the list and for the refused ones below), so each allowed codec is read end to end through
the container, protocol and codec whitelists, and each refused one is stopped before decoding.
"""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pytest

from cogvx.errors import InputError
from cogvx.video import (
    OUTPUT_FORMATS,
    VIDEO_CODECS,
    VideoReadError,
    bitexact_scaling,
    probe_video,
    read_frames,
    write_video,
)

SIZE = 64  # libsvtav1's smallest frame
LEVELS = [20, 60, 100, 140, 180, 220]  # one flat grey per frame
ALLOWED_LIST = (
    "allowed codecs: av1, gif, h264, hevc, mjpeg, mpeg1video, mpeg2video, mpeg4, png, prores, "
    "vp8, vp9."
)


def encode(path: Path, encoder: str, pix_fmt: str, **options: str) -> Path:
    """Six flat grey frames (LEVELS) at 25 fps, SIZE x SIZE, in the container `path` names."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(encoder, rate=25, options=options)
        stream.width = stream.height = SIZE
        stream.pix_fmt = pix_fmt
        for level in LEVELS:
            rgb = np.full((SIZE, SIZE, 3), level, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


QUIET = "log-level=none"  # x265 prints to stderr
# (codec on the list, encoder, file, pixel format, encoder options)
ALLOWED = [
    ("h264", "libx264", "clip.mp4", "yuv420p", {"preset": "ultrafast"}),
    ("hevc", "libx265", "clip.mkv", "yuv420p", {"preset": "ultrafast", "x265-params": QUIET}),
    ("vp8", "libvpx", "clip.webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    ("vp9", "libvpx-vp9", "clip.webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    ("av1", "libsvtav1", "clip.mp4", "yuv420p", {"preset": "12"}),
    ("mpeg4", "mpeg4", "clip.avi", "yuv420p", {}),
    ("mjpeg", "mjpeg", "clip.avi", "yuvj420p", {}),
    ("prores", "prores_ks", "clip.mov", "yuv422p10le", {}),
    ("png", "png", "clip.mov", "rgb24", {}),
    ("gif", "gif", "clip.gif", "rgb8", {}),
    ("mpeg1video", "mpeg1video", "clip.mpg", "yuv420p", {}),
    ("mpeg2video", "mpeg2video", "clip.mpg", "yuv420p", {}),  # MPEG-PS, as DVDs and camcorders
]  # fmt: skip

# (codec off the list, encoder, file, pixel format): lossless and legacy codecs this FFmpeg has
REFUSED = [
    ("ffv1", "ffv1", "clip.mkv", "yuv420p"),
    ("huffyuv", "huffyuv", "clip.avi", "yuv422p"),
    ("qtrle", "qtrle", "clip.mov", "rgb24"),
    ("flv1", "flv", "clip.avi", "yuv420p"),
    ("msmpeg4v3", "msmpeg4v3", "clip.avi", "yuv420p"),
    ("rawvideo", "rawvideo", "clip.avi", "yuv420p"),
]


def test_the_list_names_codecs_this_ffmpeg_decodes():
    import av

    assert isinstance(VIDEO_CODECS, frozenset)
    assert {row[0] for row in ALLOWED} == VIDEO_CODECS  # each one is read below
    for name in VIDEO_CODECS:
        assert av.Codec(name, "r").canonical_name == name  # a codec name, not a decoder's


@pytest.mark.parametrize(("codec", "encoder", "name", "pix_fmt", "options"), ALLOWED)
def test_every_allowed_codec_reads(tmp_path, codec, encoder, name, pix_fmt, options):
    path = encode(tmp_path / name, encoder, pix_fmt, **options)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (len(LEVELS), SIZE, SIZE)
    frames = read_frames(path, range(len(LEVELS)), info=info)
    assert frames.shape == (len(LEVELS), SIZE, SIZE, 3)
    means = frames.reshape(len(LEVELS), -1).mean(axis=1)
    assert np.abs(means - LEVELS).max() < 20, means  # the frames, in order (gif: 3-3-2 bits)


@pytest.mark.parametrize(("codec", "encoder", "name", "pix_fmt"), REFUSED)
def test_a_codec_off_the_list_is_refused(tmp_path, codec, encoder, name, pix_fmt):
    path = encode(tmp_path / f"{codec}-{name}", encoder, pix_fmt)
    for read in (probe_video, lambda p: read_frames(p, [0])):
        with pytest.raises(VideoReadError) as err:
            read(path)
        msg = str(err.value)
        assert isinstance(err.value, InputError)
        assert msg.startswith(f"video {path.name}: its video codec is {codec} ("), msg
        assert "which this server does not decode" in msg and ALLOWED_LIST in msg, msg
        assert str(tmp_path) not in msg


def test_the_probe_opens_no_decoder_off_the_list(tmp_path):
    """av.open's probe (avformat_find_stream_info) decodes frames to learn a stream's pixel format:
    for a codec off the list FFmpeg's codec_whitelist stops it before that decoder opens."""
    import av

    path = encode(tmp_path / "clip.mkv", "ffv1", "yuv420p")  # Matroska states no pixel format
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs, pytest.raises(VideoReadError, match="codec is ffv1"):
            probe_video(path)
    finally:
        av.logging.set_level(level)
    assert any("Codec (ffv1) not on whitelist" in message for _, _, message in logs), logs


def test_audio_beside_an_allowed_video_does_not_stop_it(tmp_path):
    """The whitelist names video decoders only: the probe decodes no audio, and that is fine."""
    import av

    path = tmp_path / "with_audio.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=48000, layout="mono")
        for i, level in enumerate(LEVELS):
            rgb = np.full((SIZE, SIZE, 3), level, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            out.mux(video.encode(frame))
            sound = av.AudioFrame.from_ndarray(
                np.zeros((1, 1920), np.float32), format="fltp", layout="mono"
            )
            sound.sample_rate, sound.pts = 48000, i * 1920
            sound.time_base = fractions.Fraction(1, 48000)
            out.mux(audio.encode(sound))
        out.mux(video.encode())
        out.mux(audio.encode())
    info = probe_video(path)
    assert info.num_frames == len(LEVELS)
    frames = read_frames(path, [0, len(LEVELS) - 1], info=info)
    assert np.abs(frames.reshape(2, -1).mean(axis=1) - [LEVELS[0], LEVELS[-1]]).max() < 20


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_what_this_project_writes_reads_back(tmp_path, fmt):
    """Its outputs (H.264 MP4, VP9 WebM, GIF) are inputs of V2V, captioning and enhancement:
    read as PyAV without any whitelist decodes them."""
    import av

    levels = np.array(LEVELS, np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (len(LEVELS), 48, 64, 3))
    path = write_video(np.ascontiguousarray(frames), tmp_path / f"out.{fmt}", fps=8, fmt=fmt)
    info = probe_video(path)
    assert info.num_frames == len(LEVELS)
    flags = bitexact_scaling(accurate_rounding=False)  # as read_frames converts
    with av.open(str(path)) as plain:
        decoded = [f.to_ndarray(format="rgb24", interpolation=flags) for f in plain.decode(video=0)]
    assert np.array_equal(read_frames(path, range(len(LEVELS)), info=info), np.stack(decoded))
