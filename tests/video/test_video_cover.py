"""Cover art (an attached picture) is not the video: a song with a cover is not a 1-frame clip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from cogvx.video import VideoReadError, ffmpeg_exe, probe_video, read_frames


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def cover(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cover")
    png = folder / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=32x32", "-frames:v", "1", str(png))
    return png


def test_a_song_with_cover_art_is_not_a_video(tmp_path, cover):
    song = tmp_path / "song.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-i", str(cover), "-map", "0", "-map", "1",
           "-c:a", "aac", "-c:v", "png", "-disposition:v:0", "attached_pic", str(song))  # fmt: skip
    with pytest.raises(VideoReadError, match=r"has no video stream \(found: audio, a cover pic"):
        probe_video(song)


def test_a_video_with_cover_art_reads_the_video(tmp_path, cover):
    """A guard: the cover is mapped first, and FFmpeg's MP4 demuxer lists it after the video."""
    clip = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=8:duration=1", "-i", str(cover),
           "-map", "1", "-map", "0", "-c:v:0", "png", "-disposition:v:0", "attached_pic",
           "-c:v:1", "mjpeg", "-disposition:v:1", "default", str(clip))  # fmt: skip
    info = probe_video(clip)
    assert (info.width, info.height, info.num_frames) == (64, 48, 8)
    frames = read_frames(clip, list(range(8)), info)
    assert frames.shape == (8, 48, 64, 3) and not np.all(frames[0] == frames[0, 0, 0])
