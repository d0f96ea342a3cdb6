"""Test helpers: read what ffprobe says about a media file."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path


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
