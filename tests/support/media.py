"""Test helpers: what ffprobe says about a media file, its decoded frames, file comparisons."""

from __future__ import annotations

import hashlib
import json
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest


def ffprobe(path: str | Path) -> dict:
    """Format and first video stream as ffprobe reports them (frames counted by decoding)."""
    out = subprocess.run(
        [
            "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
            "-show_entries",
            "stream=codec_name,pix_fmt,width,height,nb_read_frames,avg_frame_rate,r_frame_rate"
            ":format=format_name,duration",
            "-of", "json", str(path),
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    stream = data["streams"][0]
    return {
        "codec": stream["codec_name"],
        "pix_fmt": stream.get("pix_fmt"),
        "width": int(stream["width"]),
        "height": int(stream["height"]),
        "frames": int(stream["nb_read_frames"]),
        "fps": float(Fraction(stream["r_frame_rate"])),
        "duration": float(data["format"].get("duration", "nan")),
        "format": data["format"]["format_name"],
    }


def mp4_atoms(path: str | Path) -> list[str]:
    """Top-level MP4 box types in file order (faststart puts moov before mdat)."""
    data = Path(path).read_bytes()
    atoms, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        atoms.append(kind)
        if size < 8:
            break
        pos += size
    return atoms


def decode(path: str | Path) -> np.ndarray:
    """Every frame of a video as (T, H, W, 3) uint8 RGB (PyAV's default conversion)."""
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_same_file(a: Path, b: Path) -> None:
    """Byte-identical outputs. On a mismatch, say whether the decoded frames match (then only the
    encoding differs); lossy encoders' differing choices can change decoded pixels too."""
    if sha256(a) != sha256(b):
        same = np.array_equal(decode(a), decode(b))
        frames = "are equal: the encoding differs" if same else "differ too"
        pytest.fail(f"{a.name} and {b.name} are not byte-identical; their decoded frames {frames}")


def assert_different_video(a: Path, b: Path) -> None:
    """Different files whose decoded frames differ too (not only their encoding)."""
    assert sha256(a) != sha256(b), f"{a.name} and {b.name} are the same file"
    assert not np.array_equal(decode(a), decode(b)), f"{a.name} and {b.name}: same frames"
