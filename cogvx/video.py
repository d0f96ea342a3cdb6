"""Video output: uint8 frames to MP4 (H.264, yuv420p, faststart), WebM (VP9) or GIF."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg
import numpy as np

OUTPUT_FORMATS = ("mp4", "webm", "gif")


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg (has libx264 and libvpx-vp9)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


def _uint8(frame: np.ndarray) -> np.ndarray:
    """One frame to uint8: floats in [0, 1] are scaled, rounded and clipped."""
    if frame.dtype == np.uint8:
        return frame
    return np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _as_array(frames: np.ndarray | Sequence) -> np.ndarray:
    if not isinstance(frames, np.ndarray):
        frames = np.stack([np.asarray(f) for f in frames])
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (T, H, W, 3); got {frames.shape}")
    return frames


def to_uint8_frames(frames: np.ndarray | Sequence) -> np.ndarray:
    """(T, H, W, 3) uint8 from uint8 arrays, [0, 1] float arrays or a list of PIL images."""
    frames = _as_array(frames)
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    return np.stack([_uint8(f) for f in frames])


def _crf(quality: int, worst: int, best: int) -> int:
    """Map quality 1..100 linearly onto an encoder's CRF scale (worst at 1, best at 100)."""
    return round(worst + (best - worst) * (quality - 1) / 99)


def _encoder_args(fmt: str, quality: int) -> list[str]:
    if fmt == "mp4":
        crf = _crf(quality, worst=40, best=12)  # default quality 80 -> crf 18
        return [
            "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf),
            "-pix_fmt", "yuv420p", "-movflags", "+faststart",
        ]  # fmt: skip
    if fmt == "webm":
        crf = _crf(quality, worst=50, best=15)
        return [
            "-c:v", "libvpx-vp9", "-crf", str(crf), "-b:v", "0", "-row-mt", "1",
            "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p",
        ]  # fmt: skip
    if fmt == "gif":
        # One pass: build a palette from the clip and map onto it (quality has no effect).
        graph = "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=sierra2_4a"
        return ["-filter_complex", graph, "-loop", "0"]
    raise ValueError(f"output_format {fmt!r} is not allowed; choose one of {list(OUTPUT_FORMATS)}")


def write_video(
    frames: np.ndarray | Sequence, path: str | Path, fps: float, fmt: str = "mp4", quality: int = 80
) -> Path:
    """Encode frames with ffmpeg through a pipe; even sizes are enforced for yuv420p."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(
            f"output_format {fmt!r} is not allowed; choose one of {list(OUTPUT_FORMATS)}"
        )
    if not 1 <= quality <= 100:
        raise ValueError(f"output_quality must be between 1 and 100; got {quality}")
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    data = _as_array(frames)
    t, h, w, _ = data.shape
    if fmt != "gif" and (h % 2 or w % 2):
        h, w = h - h % 2, w - w % 2
        data = data[:, :h, :w]
    path = Path(path)
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-",
        *_encoder_args(fmt, quality), "-r", f"{fps}", str(path),
    ]  # fmt: skip
    # Frames are converted one at a time while ffmpeg encodes the previous ones.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        try:
            for frame in data:
                proc.stdin.write(np.ascontiguousarray(_uint8(frame)).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg exited early; its exit code and stderr say why
        finally:
            proc.stdin.close()
            code = proc.wait()
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed writing {path.name}: {err.read().decode()[-2000:]}")
    return path


def fresh_output_path(root: str | Path, fmt: str, stem: str = "video") -> Path:
    """A new per-prediction folder under `root` (older ones deleted) and a unique file name."""
    root = Path(root)
    if root.exists():
        for old in root.iterdir():
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    uid = uuid.uuid4().hex[:12]
    folder = root / uid
    folder.mkdir(parents=True)
    return folder / f"{stem}-{uid}.{fmt}"
