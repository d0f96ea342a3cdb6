"""Video output: uint8 frames to MP4 (H.264, yuv420p, faststart), WebM (VP9) or GIF.

Video input: `probe_video` (timestamps from packets) and `read_frames` (one decoding pass).
"""

from __future__ import annotations

import itertools
import os
import platform
import re
import stat
import subprocess
import tempfile
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

OUTPUT_FORMATS = ("mp4", "webm", "gif")
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


# Same frames -> same bytes, every call, on every x86-64 CPU (tests/test_video_determinism.py):
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
            stream = out.add_stream(codec, rate=rate, options=options)
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


def _encode_gif(data: np.ndarray, path: Path, fps: float, global_args: Sequence[str] = ()) -> None:
    """GIF through the ffmpeg binary: a palette built from the clip, then mapped onto it."""
    t, h, w, _ = data.shape
    graph = "split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=sierra2_4a"
    cmd = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *global_args,
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-",
        "-filter_complex", graph, "-sws_flags", "+accurate_rnd+bitexact", "-fflags", "+bitexact",
        "-loop", "0", str(path),
    ]  # fmt: skip
    # Frames are converted one at a time while ffmpeg works on the previous ones.
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


OUTPUT_FOLDER = re.compile(r"cogvx-([0-9a-f]{12})")  # a per-prediction folder: cogvx-<uid>


def _remove_own_output(folder: Path) -> None:
    """Delete a folder `fresh_output_path` made and the output files in it, nothing else.

    Files are recognised by name (`<stem>-<uid>.<ext>`); anything else keeps the folder."""
    match = OUTPUT_FOLDER.fullmatch(folder.name)
    try:
        if not match or not stat.S_ISDIR(os.lstat(folder).st_mode):  # never through a symlink
            return
        ours = re.compile(rf"[^/]+-{match.group(1)}\.[a-z0-9]+")
        for entry in os.scandir(folder):
            if ours.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
        os.rmdir(folder)  # fails, leaving it, if anything else is inside
    except OSError:
        pass


def fresh_output_path(root: str | Path, fmt: str, stem: str = "video") -> Path:
    """A new per-prediction folder under `root` and a unique file name in it.

    The folders earlier calls made (cogvx-<uid>) are deleted with their outputs; nothing else in
    `root` is touched, so it may be a folder that holds other files."""
    root = Path(root)
    if root.is_dir():
        for old in root.iterdir():
            _remove_own_output(old)
    uid = uuid.uuid4().hex[:12]
    folder = root / f"cogvx-{uid}"
    folder.mkdir(parents=True)
    return folder / f"{stem}-{uid}.{fmt}"


# --- Reading ------------------------------------------------------------------------------------
# One reader: PyAV (FFmpeg 8 inside the wheel: H.264, HEVC, VP9, AV1). A probe demuxes packets only
# (cheap) to learn each frame's timestamp; a single decoding pass then converts just the frames
# asked for and stops after the last one. Frame i is the i-th frame in presentation order.

SCAN_REORDER_MARGIN = 64  # packets read past the scan limit, so reordered (B-)frames are all seen


class VideoReadError(ValueError):
    """The file is not a video that can be decoded here; the message names the file and why."""

    def __init__(self, message: str, frames_decoded: int | None = None) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded  # read_frames: frames that came out before the end


@dataclass(frozen=True)
class VideoInfo:
    """What a probe found: stream facts and the start time of every frame it scanned."""

    path: Path
    codec: str
    width: int
    height: int
    fps: float  # average frame rate, as the container states it (decord's get_avg_fps)
    duration: float  # seconds; the container's figure, else the last scanned frame's end
    timestamps: np.ndarray = field(repr=False)  # (N,) float64 s from the stream start, sorted
    pts: np.ndarray = field(repr=False)  # (N,) int64 presentation stamps in the stream time base
    complete: bool = True  # False: the scan stopped at `scan_seconds`; the file goes on
    index_frames: int = 0  # frames the container's index lists (0 when it has none)

    @property
    def num_frames(self) -> int:
        """Frames scanned (all of them when `complete`)."""
        return len(self.timestamps)

    def head(self, frames: int) -> VideoInfo:
        """The same probe limited to its first `frames` frames."""
        return replace(self, timestamps=self.timestamps[:frames], pts=self.pts[:frames])


# Only containers that cannot name other files or URLs are opened, and only through the `file`
# protocol: an HLS playlist (.m3u8), a concat script, a DASH manifest or an image sequence is
# refused before its demuxer reads anything. MOV's external data references stay off.
DEMUXERS = ("mov", "matroska", "avi", "mpegts", "gif")  # mov = mp4/m4v/3gp; matroska = mkv/webm
READ_OPTIONS = {
    "format_whitelist": ",".join(DEMUXERS),
    "protocol_whitelist": "file",
    "enable_drefs": "0",
}
ACCEPTED = "an MP4, MOV, MKV, WebM, AVI, MPEG-TS or GIF file (H.264, HEVC, VP9 or AV1)"


def _open(path: Path) -> Any:
    """Open a local video file for reading with the container and protocol whitelists."""
    import av

    if not path.is_file():
        raise VideoReadError(f"video {path}: no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"video {path.name}: the file is empty (0 bytes)")
    try:
        return av.open(str(path), container_options=READ_OPTIONS, metadata_errors="ignore")
    except av.error.EOFError as exc:
        raise VideoReadError(
            f"video {path.name}: the file ends before its first frame (zero-length or truncated)"
        ) from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, av.error.ArgumentError):  # what a format off the whitelist gives
            reason = "its container format is not one this server opens"
        else:
            reason = getattr(exc, "strerror", None) or exc  # without the server-side path
        raise VideoReadError(
            f"video {path.name}: not a video file FFmpeg can read ({reason}); send {ACCEPTED}. "
            "Playlists (.m3u8), concat scripts and other files that point to further files or "
            "URLs are refused"
        ) from exc


def _video_stream(container: Any, path: Path) -> Any:
    import av

    if not container.streams.video:
        found = sorted({s.type for s in container.streams})
        if not found:
            raise VideoReadError(f"video {path.name}: the file holds no streams (zero-length?)")
        raise VideoReadError(
            f"video {path.name}: has no video stream (found: {', '.join(found)}); send a video file"
        )
    stream = container.streams.video[0]
    try:
        ctx = stream.codec_context
        codec = ctx.codec.name
    except (av.FFmpegError, AttributeError) as exc:
        raise VideoReadError(
            f"video {path.name}: no decoder for its video codec ({exc}); re-encode it to "
            "H.264, HEVC, VP9 or AV1"
        ) from exc
    if not ctx.width or not ctx.height:
        raise VideoReadError(f"video {path.name}: the {codec} stream states no frame size")
    return stream


def probe_video(path: str | Path, scan_seconds: float | None = None) -> VideoInfo:
    """Stream facts and per-frame timestamps, from packets only (nothing is decoded).

    scan_seconds: stop after that much of the video (its later frames are not listed and
    `complete` is False); None scans the whole file.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        tb = stream.time_base
        start = stream.start_time or 0
        limit = None if scan_seconds is None else start + int(scan_seconds / tb)
        stamps: list[int | None] = []
        past_limit = 0
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # flush packets; frames an edit list cuts away
                pts = packet.pts if packet.pts is not None else packet.dts
                stamps.append(pts)
                if limit is not None and pts is not None and pts > limit:
                    past_limit += 1
                    if past_limit > SCAN_REORDER_MARGIN:
                        break
        except av.FFmpegError as exc:
            raise VideoReadError(
                f"video {path.name}: damaged after {len(stamps)} frames ({exc})"
            ) from exc
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if None in stamps:  # no timestamps (raw streams): frames follow each other at fps
            step = 1 / (fps or 25.0) / tb
            pts_arr = (np.arange(len(stamps)) * step).astype(np.int64) + start
        else:
            pts_arr = np.sort(np.asarray(stamps, dtype=np.int64))
        complete = past_limit <= SCAN_REORDER_MARGIN
        if not complete:
            pts_arr = pts_arr[pts_arr <= limit]
        if len(pts_arr) == 0:
            raise VideoReadError(f"video {path.name}: the video stream holds no frames")
        times = (pts_arr - start).astype(np.float64) * float(tb)
        if not fps:
            fps = (len(times) - 1) / times[-1] if times[-1] > 0 else 25.0
        if stream.duration:
            duration = float(stream.duration * tb)
        elif container.duration:
            duration = container.duration / 1e6
        else:
            duration = float(times[-1]) + 1 / fps
        return VideoInfo(
            path=path,
            codec=stream.codec_context.codec.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=fps,
            duration=duration,
            timestamps=times,
            pts=pts_arr,
            complete=complete,
            index_frames=int(stream.frames or 0),
        )


def read_frames(
    path: str | Path,
    indices: Sequence[int],
    info: VideoInfo | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Frames `indices` (presentation order, repeats allowed) as (T, H, W, 3) uint8 RGB.

    One decoding pass from the start that converts only the wanted frames and stops after the
    last; raises VideoReadError if any of them does not come back (truncated or damaged file).
    size: (width, height) to scale every frame to (area filter); None keeps the stream's size.
    """
    import av

    path = Path(path)
    wanted_list = [int(i) for i in indices]
    if not wanted_list:
        raise ValueError("indices: no frames asked for")
    if info is None:
        info = probe_video(path)
    if min(wanted_list) < 0 or max(wanted_list) >= info.num_frames:
        raise ValueError(
            f"indices: {wanted_list} reach outside frames 0..{info.num_frames - 1} of {path.name}"
        )
    wanted = set(wanted_list)
    last = max(wanted)
    index_of = {int(p): i for i, p in enumerate(info.pts)}
    width, height = size or (info.width, info.height)
    same_size = bitexact_scaling(accurate_rounding=False)
    area = bitexact_scaling("AREA", accurate_rounding=False)
    got: dict[int, np.ndarray] = {}
    position = -1
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                # by timestamp, so a frame the decoder drops cannot shift the ones after it
                pts = frame.pts
                position = position + 1 if pts is None else index_of.get(pts, position + 1)
                if position in wanted and position not in got:
                    # bit-exact colour conversion: the same pixels on every CPU
                    if (frame.width, frame.height) == (width, height):
                        got[position] = frame.to_ndarray(format="rgb24", interpolation=same_size)
                    else:
                        got[position] = frame.to_ndarray(
                            format="rgb24", width=width, height=height, interpolation=area
                        )
                if position >= last:
                    break
        except av.FFmpegError as exc:
            raise VideoReadError(
                f"video {path.name}: decoding failed after frame {position} ({exc})"
            ) from exc
    missing = sorted(wanted - got.keys())
    if missing:
        raise VideoReadError(
            f"video {path.name}: frames {missing[:8]}{' ...' if len(missing) > 8 else ''} did not "
            f"decode (the decoder stopped after frame {position} of the {info.num_frames} the "
            "file lists); the file is truncated or damaged",
            frames_decoded=position + 1,
        )
    return np.stack([got[i] for i in wanted_list])
