"""Video output: uint8 frames to byte-reproducible MP4 (H.264 yuv420p, faststart), WebM or GIF."""

from __future__ import annotations

import itertools
import platform
import subprocess
import tempfile
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import numpy as np

from cogvx.errors import InputError

OUTPUT_FORMATS = ("mp4", "webm", "gif")
# GIF frame delays are whole hundredths of a second, and browsers (Chrome, Firefox, Safari) play
# a delay of 0 or 1 as 10: above 50 fps FFmpeg mixes 1/100 s delays in (60 fps: 1, 2, 2, 1, ...)
# and the GIF plays several times too slowly. Up to 50 fps every delay is 2/100 s or more, and
# FFmpeg's muxer rounds each frame's start time, so the delays add up to the clip's length.
GIF_MAX_FPS = 50
CONVERT_AHEAD = 4  # frames converted ahead of the encoder


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped with imageio-ffmpeg (has libx264 and libvpx-vp9)."""
    import imageio_ffmpeg  # only the writer needs it (the caption image reads with PyAV)

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


# Same frames -> same bytes, every call, on every x86-64 CPU (tests/video/test_video_determinism):
# - x264's AVX-512 kernels read uninitialised heap memory: on AVX-512 CPUs, in-process encodes of
#   identical frames differed call to call (a fresh ffmpeg process only looks stable because its
#   heap starts clean). x264's SSSE3+ kernels also give other bytes than its SSE2 and C code, so
#   x264 runs its SSE2 kernels (x86-64's baseline) on every CPU: one code path everywhere.
#   Left: mb-tree's reciprocal (rcpps) is approximate and Intel and AMD round its last bits
#   differently; without mb-tree the SSE2 output equals x264's C code, but files grow 1.4-3.2x.
# - Thread counts change x264's and libvpx's output, so they are fixed, not taken from the host.
# - RGB -> YUV 4:2:0 uses swscale's bit-exact mode (its SIMD then equals its C code).
# - Muxers run in bitexact mode (no random Matroska segment id, no library version tags).
ENCODER_THREADS = 4
_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
X264_PORTABLE_PARAMS = "asm=SSE2" if _X86_64 else ""


def _codec(
    fmt: str, quality: int, x264_params: str = X264_PORTABLE_PARAMS
) -> tuple[str, dict[str, str]]:
    """libav encoder name and options for mp4 (H.264) or webm (VP9)."""
    threads = str(ENCODER_THREADS)
    if fmt == "mp4":
        crf = _crf(quality, worst=40, best=12)  # default quality 80 -> crf 18
        opts = {"crf": str(crf), "preset": "veryfast", "threads": threads}
        return "libx264", {**opts, "x264-params": x264_params} if x264_params else opts
    crf = _crf(quality, worst=50, best=15)
    opts = {"crf": str(crf), "b": "0", "row-mt": "1", "deadline": "realtime", "cpu-used": "8"}
    return "libvpx-vp9", {**opts, "threads": threads}


def bitexact_scaling(method: str = "BILINEAR", accurate_rounding: bool = True) -> Any:
    """swscale flags for `method` in bit-exact mode, so the result does not depend on the CPU.

    Writing (RGB -> YUV) also asks for accurate rounding: its SIMD then equals its C code.
    Reading (YUV -> RGB) does not: accurate rounding swaps swscale's same-size converter for a
    chroma-interpolating one (not the original demo's pixels: max diff 67-189); bit-exact alone
    gives one result on every CPU with SSSE3 (every x86-64 server CPU since 2011; plain-C
    FFmpeg differs by up to 3 levels).
    """
    from av.video.reformatter import Interpolation

    flags = Interpolation[method] | Interpolation.BITEXACT
    return flags | Interpolation.ACCURATE_RND if accurate_rounding else flags


def _to_yuv420p(rgb: np.ndarray) -> Any:
    """uint8 RGB (or [0, 1] floats) -> a yuv420p frame (BT.601 limited range), bit-exact."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(_uint8(rgb)), format="rgb24")
    return frame.reformat(format="yuv420p", interpolation=bitexact_scaling(), threads=1)


def _encode_av(
    data: np.ndarray,
    path: Path,
    fps: float,
    fmt: str,
    quality: int,
    x264_params: str = X264_PORTABLE_PARAMS,
) -> None:
    """MP4/WebM in-process with PyAV: no encoder process to start (13 vs 33 ms, 49 tiny frames)."""
    import av

    codec, options = _codec(fmt, quality, x264_params)
    container_options = {"fflags": "+bitexact"}
    if fmt == "mp4":
        container_options["movflags"] = "+faststart"
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(path), "w", format=fmt, options=container_options) as out:
            # `codec` is a str, so the stubs cannot pick the video-stream overload
            stream = cast(av.VideoStream, out.add_stream(codec, rate=rate, options=options))
            stream.width, stream.height, stream.pix_fmt = data.shape[2], data.shape[1], "yuv420p"
            # A helper thread converts frame i+1 to YUV (swscale and numpy release the GIL)
            # while frame i encodes; at most CONVERT_AHEAD frames wait converted.
            with ThreadPoolExecutor(1) as pool:
                ahead: deque = deque()
                frames = iter(data)
                for rgb in itertools.islice(frames, CONVERT_AHEAD):
                    ahead.append(pool.submit(_to_yuv420p, rgb))
                index = 0
                while ahead:
                    frame = ahead.popleft().result()
                    rgb = next(frames, None)
                    if rgb is not None:
                        ahead.append(pool.submit(_to_yuv420p, rgb))
                    frame.pts, frame.time_base = index, 1 / rate
                    out.mux(stream.encode(frame))
                    index += 1
            out.mux(stream.encode())
    except av.FFmpegError as exc:
        raise RuntimeError(f"encoding {path.name} ({codec}) failed: {exc}") from exc


# One 256-colour palette from every pixel of every frame (stats_mode=full). Not stats_mode=diff:
# FFmpeg's palettegen counts a changed pixel's colour from the frame before, so a frame's colours
# enter only when a later frame changes them and the last frame's never do (flat greys 120..220
# came back with 220 read as 200). Per-frame palettes (stats_mode=single, measured on 49-frame
# 480x320 clips): better colours, but 11x the bytes (0.43 -> 4.8 MB) and 8x the flicker where
# the background stands still. full: the same sizes as diff, and no frame left out.
GIF_GRAPH = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=sierra2_4a"


def _encode_gif(data: np.ndarray, path: Path, fps: float, global_args: Sequence[str] = ()) -> None:
    """GIF through the ffmpeg binary: one palette built from all frames, then mapped onto each."""
    t, h, w, _ = data.shape
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *global_args,
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-",
        "-filter_complex", GIF_GRAPH, "-sws_flags", "+accurate_rnd+bitexact",
        "-fflags", "+bitexact", "-loop", "0", str(path),
    ]  # fmt: skip
    # Frames are converted one at a time while ffmpeg works on the previous ones.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
        assert proc.stdin is not None  # stdin=PIPE
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


def check_gif_fps(fmt: str, fps: float, inputs: str, fix: str = "") -> None:
    """InputError when a GIF would play faster than GIF_MAX_FPS.

    inputs: which inputs make `fps` ("fps=30 with interpolate"); fix: what to set instead."""
    if fmt == "gif" and fps > GIF_MAX_FPS + 1e-6:
        instead = f"{fix}, or choose" if fix else "choose"
        raise InputError(
            f"{inputs} gives {fps:.4g} fps, but output_format=gif plays at most {GIF_MAX_FPS} fps "
            "(GIF frame delays are whole 1/100 s and browsers play delays under 2/100 s as "
            f"1/10 s): {instead} output_format mp4 or webm"
        )


def write_video(
    frames: np.ndarray | Sequence, path: str | Path, fps: float, fmt: str = "mp4", quality: int = 80
) -> Path:
    """Encode frames: MP4 = H.264 yuv420p + faststart, WebM = VP9, GIF = palette (no quality)."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(
            f"output_format {fmt!r} is not allowed; choose one of {list(OUTPUT_FORMATS)}"
        )
    if not 1 <= quality <= 100:
        raise ValueError(f"output_quality must be between 1 and 100; got {quality}")
    if not fps > 0:
        raise ValueError(f"fps must be positive; got {fps}")
    check_gif_fps(fmt, fps, f"fps={fps:g}", f"use fps up to {GIF_MAX_FPS}")
    data = _as_array(frames)
    path = Path(path)
    if fmt == "gif":
        _encode_gif(data, path, fps)
        return path
    h, w = data.shape[1:3]
    if h % 2 or w % 2:  # yuv420p needs even sizes
        data = data[:, : h - h % 2, : w - w % 2]
    _encode_av(data, path, fps, fmt, quality)
    return path
