"""File inputs: only this request's downloads are read; media readers open only safe containers."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from cogvx.images import load_image
from cogvx.net import inputs
from cogvx.net.inputs import request_file
from cogvx.video import VideoReadError, probe_video, read_frames

FFMPEG = "/usr/bin/ffmpeg"


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture
def download():
    """A file made the way Cog's downloader makes one (NamedTemporaryFile in the temp dir)."""
    made: list[str] = []

    def make(suffix: str = "clip.mp4", data: bytes = b"data") -> Path:
        with tempfile.NamedTemporaryFile(suffix=suffix, delete=False) as f:
            f.write(data)
        made.append(f.name)
        return Path(f.name)

    yield make
    for name in made:
        Path(name).unlink(missing_ok=True)


def _message(name: str, value) -> str:
    with pytest.raises(ValueError) as err:
        request_file(name, value)
    return str(err.value)


def test_a_download_is_accepted_and_none_stays_none(download):
    path = download()
    assert request_file("video", path) == path
    assert request_file("video", None) is None


def test_strings_are_refused_even_for_a_real_download(download):
    path = download()
    msg = _message("video", str(path))  # coglet hands a non-URL string through as a str
    assert msg.startswith(f"video='{path}' is not a file sent with this request")


def test_one_message_for_existing_missing_and_forbidden_paths(tmp_path, download):
    private = tmp_path / "private.mp4"
    private.write_bytes(b"secret")
    real = download()
    linked = Path(tempfile.gettempdir()) / f"tmp{os.urandom(4).hex()}link.mp4"
    linked.symlink_to(private)
    hard = Path(tempfile.gettempdir()) / f"tmp{os.urandom(4).hex()}hard.mp4"
    os.link(real, hard)
    loose = Path(tempfile.gettempdir()) / f"tmp{os.urandom(4).hex()}open.mp4"
    loose.write_bytes(b"x")
    loose.chmod(0o644)
    try:
        values = [
            Path("/etc/passwd"),
            private,  # exists, outside the temp dir
            tmp_path / "missing.mp4",
            Path(tempfile.gettempdir()) / "tmpabcdefghmissing.mp4",  # download-like, missing
            Path(tempfile.gettempdir()) / ".." / real.name,
            linked,  # a symlink named like a download
            hard,  # a second link to a file
            loose,  # group/other-readable: not made by mkstemp
            Path(tempfile.gettempdir()),
            "file:///etc/passwd",
            b"/etc/passwd",
            42,
        ]
        shapes = {_message("video", v).replace(repr(str(v)) if not isinstance(v, (bytes, int))
                                               else repr(v), "<v>") for v in values}  # fmt: skip
        assert shapes == {
            "video=<v> is not a file sent with this request: upload the file, or give an "
            "http(s) URL or a data: URI. Paths on the server are never read"
        }
    finally:
        for p in (linked, hard, loose):
            p.unlink(missing_ok=True)


def test_files_older_than_this_worker_are_refused(download, monkeypatch):
    path = download()
    monkeypatch.setattr(inputs, "STARTED_NS", path.stat().st_ctime_ns + 1)
    assert "is not a file sent with this request" in _message("image", path)


def test_long_values_are_clipped_in_the_message():
    msg = _message("video", "/" + "a" * 5000)
    assert len(msg) < 300


# --- Media readers: container and protocol whitelists -------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A local 'private' clip, files that name it, and the containers users send."""
    d = tmp_path_factory.mktemp("inputs-media")
    src = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=8:duration=1"]
    h264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    made = {
        "clip.mp4": [*src, *h264],
        "clip.mov": [*src, *h264],
        "clip.mkv": [*src, *h264],
        "clip.avi": [*src, "-c:v", "mpeg4"],
        "clip.ts": [*src, *h264, "-f", "mpegts"],
        "clip.webm": [*src, "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"],
        "clip.gif": [*src],
    }
    for name, args in made.items():
        ffmpeg(*args, str(d / name))
    files = {name: d / name for name in made}
    files["list.m3u8"] = d / "list.m3u8"
    files["list.m3u8"].write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{d / 'clip.ts'}\n#EXT-X-ENDLIST\n"
    )
    files["remote.m3u8"] = d / "remote.m3u8"
    files["remote.m3u8"].write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n"
    )
    files["concat.mp4"] = d / "concat.mp4"
    files["concat.mp4"].write_text(f"ffconcat version 1.0\nfile '{d / 'clip.mp4'}'\n")
    files["concat.ffconcat"] = d / "concat.ffconcat"
    files["concat.ffconcat"].write_text("ffconcat version 1.0\nfile clip.mp4\n")
    files["frames.png"] = d / "frames.png"
    Image.new("RGB", (16, 16)).save(files["frames.png"])
    return files


@pytest.mark.parametrize(
    "name", ["clip.mp4", "clip.mov", "clip.mkv", "clip.avi", "clip.ts", "clip.webm", "clip.gif"]
)
def test_supported_containers_still_read(media, name):
    info = probe_video(media[name])
    assert info.num_frames == 8 and (info.width, info.height) == (64, 48)
    assert read_frames(media[name], [0, 7], info=info).shape == (2, 48, 64, 3)


@pytest.mark.parametrize(
    "name", ["list.m3u8", "remote.m3u8", "concat.mp4", "concat.ffconcat", "frames.png"]
)
def test_files_that_name_other_files_are_refused(media, name):
    with pytest.raises(VideoReadError) as err:
        probe_video(media[name])
    msg = str(err.value)
    assert msg.startswith(f"video {name}: not a video file FFmpeg can read (")
    assert "its container format is not one this server opens" in msg
    assert "Playlists (.m3u8), concat scripts" in msg and str(media[name].parent) not in msg


@pytest.mark.parametrize(
    ("fmt", "ok"),
    [("PNG", True), ("JPEG", True), ("WEBP", True), ("GIF", True), ("BMP", True),
     ("TIFF", True), ("ICO", False), ("EPS", False), ("PPM", False), ("TGA", False)],
)  # fmt: skip
def test_images_open_only_in_the_allowed_formats(tmp_path, fmt, ok):
    path = tmp_path / f"in.{fmt.lower()}"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, fmt)
    if ok:
        assert load_image(path, name="image", log=lambda _: None).size == (8, 8)
    else:
        with pytest.raises(ValueError, match=rf"image 'in.{fmt.lower()}' is not an image this"):
            load_image(path, name="image", log=lambda _: None)
