"""Video input: `probe_video` (timestamps from packets) and `read_frames` (one decoding pass).

Both give frames as they are meant to be shown: a display matrix (phones store portrait video as
landscape frames turned by 90 or 270 degrees) is applied as FFmpeg's own autorotate applies it."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cogvx.errors import InputError
from cogvx.log import clip
from cogvx.video.write import bitexact_scaling

# (cheap) to learn each frame's timestamp; a single decoding pass then converts just the frames
# asked for and stops after the last one. Frame i is the i-th frame in presentation order.

SCAN_REORDER_MARGIN = 64  # packets read past the scan limit, so reordered (B-)frames are all seen
MAX_PROBE_FRAMES = 100_000  # a probe lists at most this many frames + 1 (55 min at 30 fps)
# The decoder refuses a frame over this many times the stream's stated pixels (the stated size is
# what callers cap; a later frame may not be larger: a 1 MB file could otherwise ask for 6 GB
# frames). The slack covers FFmpeg's stride alignment, which counts toward its own check, and
# the floor the buffers some decoders size by it (mpeg4 at 64x48 needs 53,760).
DECODE_PIXELS_SLACK = 2
DECODE_PIXELS_FLOOR = 1 << 20
# A display matrix whose angle is this many degrees or less from a multiple of 90 counts as that
# multiple (FFmpeg's rule: 89.6 -> 90); other angles are refused (see `_orientation`).
ANGLE_TOLERANCE = 1.0


class VideoReadError(InputError):
    """The file is not a video that can be decoded here; the message names the file and why."""

    def __init__(self, message: str, frames_decoded: int | None = None) -> None:
        super().__init__(message)
        self.frames_decoded = frames_decoded  # read_frames: frames that came out before the end


@dataclass(frozen=True)
class VideoInfo:
    """What a probe found: stream facts and the start time of every frame it scanned."""

    path: Path
    codec: str
    width: int  # as displayed: the stored frame's height when `rotation` is 90 or 270
    height: int
    fps: float  # average frame rate, as the container states it (decord's get_avg_fps)
    duration: float  # seconds; the container's figure, else the last scanned frame's end
    timestamps: np.ndarray = field(repr=False)  # (N,) float64 s from the stream start, sorted
    pts: np.ndarray = field(repr=False)  # (N,) int64 presentation stamps in the stream time base
    complete: bool = True  # False: the scan stopped at `scan_seconds`; the file goes on
    index_frames: int = 0  # frames the container's index lists (0 when it has none)
    rotation: int = 0  # degrees clockwise (0, 90, 180, 270) the stored frames turn to display
    mirrored: bool = False  # and flipped left-right after the turn (a display matrix's flip)

    @property
    def stored_size(self) -> tuple[int, int]:
        """(width, height) of the frames as the stream stores them, before the turn."""
        return (
            (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)
        )

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
# mov = mp4/m4v/3gp; matroska = mkv/webm; mpeg = MPEG-PS (.mpg, .vob)
DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "gif")
ACCEPTED = "an MP4, MOV, MKV, WebM, AVI, MPEG-TS, MPEG-PS or GIF file (H.264, HEVC, VP9 or AV1)"
# The video codecs decoded (libavcodec's names, ffprobe's codec_name): what cameras, phones,
# editors and this project write. FFmpeg's other decoders (hundreds, rarely used, a long CVE
# history) never see user bytes: a stream in another codec is refused before anything decodes.
# FFmpeg's `codec_whitelist` keeps the probe in av.open (avformat_find_stream_info, which decodes
# a few frames of every stream) from opening any other decoder, audio and subtitle ones included,
# and read_frames holds its decoder to the same list.
VIDEO_CODECS = frozenset(
    ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "prores", "png", "gif", "mpeg1video",
     "mpeg2video")
)  # fmt: skip


@functools.cache
def _decoders() -> str:
    """`codec_whitelist`: this FFmpeg's software decoders (by name) of the VIDEO_CODECS."""
    import av
    from av.codec.codec import Capabilities, UnknownCodecError

    device_only = Capabilities.hardware | Capabilities.hybrid  # cuvid, qsv, amf, v4l2m2m
    names = set()
    for name in av.codecs_available:
        try:
            codec = av.Codec(name, "r")
        except UnknownCodecError:  # an encoder only
            continue
        if codec.canonical_name in VIDEO_CODECS and not codec.capabilities & device_only:
            names.add(codec.name)  # e.g. libdav1d, which PyAV picks for AV1
    return ",".join(sorted(names))


def _read_options() -> dict[str, str]:
    return {
        "format_whitelist": ",".join(DEMUXERS),
        "protocol_whitelist": "file",
        "enable_drefs": "0",
        "codec_whitelist": _decoders(),
    }


def _name(path: Path) -> str:
    """The file's name for messages: one printable line (user file names can hold anything)."""
    return clip(path.name)


def _open(path: Path) -> Any:
    """Open a local video file for reading with the container, protocol and codec whitelists."""
    import av

    if not path.is_file():
        raise VideoReadError(f"video {clip(str(path))}: no such file")
    if path.stat().st_size == 0:
        raise VideoReadError(f"video {_name(path)}: the file is empty (0 bytes)")
    try:  # container_options: AVFormatContext's, given to avformat_open_input
        return av.open(str(path), container_options=_read_options(), metadata_errors="ignore")
    except av.error.EOFError as exc:
        raise VideoReadError(
            f"video {_name(path)}: the file ends before its first frame (zero-length or truncated)"
        ) from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, av.error.ArgumentError):  # what a format off the whitelist gives
            reason: object = "its container format is not one this server opens"
        else:
            reason = getattr(exc, "strerror", None) or exc  # without the server-side path
        raise VideoReadError(
            f"video {_name(path)}: not a video file FFmpeg can read ({reason}); send {ACCEPTED}. "
            "Playlists (.m3u8), concat scripts and other files that point to further files or "
            "URLs are refused"
        ) from exc


def _video_stream(container: Any, path: Path) -> Any:
    import av

    cover = av.stream.Disposition.attached_pic  # a song's or a film's cover art: one picture
    videos = [s for s in container.streams.video if not s.disposition & cover]
    if not videos:
        found = sorted({s.type for s in container.streams if s.type != "video"})
        found += ["a cover picture"] if container.streams.video else []
        if not found:
            raise VideoReadError(f"video {_name(path)}: the file holds no streams (zero-length?)")
        raise VideoReadError(
            f"video {_name(path)}: has no video stream (found: {', '.join(found)}); "
            "send a video file"
        )
    stream = videos[0]
    try:
        ctx = stream.codec_context
        codec = ctx.codec.canonical_name
    except (av.FFmpegError, AttributeError) as exc:
        raise VideoReadError(
            f"video {_name(path)}: no decoder for its video codec ({exc}); re-encode it to "
            "H.264, HEVC, VP9 or AV1"
        ) from exc
    if codec not in VIDEO_CODECS:
        raise VideoReadError(
            f"video {_name(path)}: its video codec is {codec} ({ctx.codec.long_name}), which this "
            f"server does not decode; allowed codecs: {', '.join(sorted(VIDEO_CODECS))}. "
            "Re-encode it, e.g. to H.264"
        )
    if not ctx.width or not ctx.height:
        raise VideoReadError(f"video {_name(path)}: the {codec} stream states no frame size")
    return stream


def _orientation(frame: Any, path: Path) -> tuple[int, bool]:
    """(clockwise turn, mirrored) that stand `frame` upright, from its display matrix.

    FFmpeg's autorotate (fftools/ffmpeg_filter.c), so the frames equal `ffmpeg -i file` output:
    the angle is the matrix's rotation rounded to a degree; at 90/270 a negative/positive matrix
    entry c selects the transposing variant, at 180 and 0 the signs of a and d select the flips.
    FFmpeg turns other angles with its `rotate` filter (black corners, same frame size); phones
    and editors write multiples of 90 only, so another angle is refused rather than guessed.
    """
    side = frame.side_data.get("DISPLAYMATRIX")
    if side is None:
        return 0, False
    a, b, _, c, d = struct.unpack("<9i", bytes(side))[:5]  # 16.16 fixed point; only ratios used
    if not math.hypot(a, c) or not math.hypot(b, d):
        return 0, False  # a degenerate matrix: FFmpeg's angle is NaN and it applies nothing
    turn = math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    turn = math.copysign(math.floor(abs(turn) + 0.5), turn) % 360  # C's round, then 0..359
    quarter = round(turn / 90) % 4
    if abs(turn - 90 * round(turn / 90)) > ANGLE_TOLERANCE:
        raise VideoReadError(
            f"video {_name(path)}: its display matrix turns the picture {turn:.0f} degrees "
            "clockwise; only turns by multiples of 90 degrees are applied here. Re-encode it "
            "upright first (e.g. ffmpeg -i in.mp4 out.mp4, which applies the turn)"
        )
    if quarter == 1:  # transpose=cclock_flip (a plain transpose) or transpose=clock
        return 90, c > 0
    if quarter == 3:  # transpose=clock_flip or transpose=cclock
        return 270, c < 0
    if quarter == 2:  # hflip and/or vflip
        hflip, vflip = a < 0, d < 0
        return (180, not hflip) if vflip else (0, hflip)
    return (180, True) if d < 0 else (0, False)  # vflip


def _upright(frame: np.ndarray, rotation: int, mirrored: bool) -> np.ndarray:
    """(H, W, C) stored frame turned `rotation` degrees clockwise, then mirrored: a view."""
    if rotation:
        frame = np.rot90(frame, -(rotation // 90))
    return frame[:, ::-1] if mirrored else frame


def _set_decoder(stream: Any, width: int, height: int) -> None:
    """Decoder limits: frames up to about `width`x`height`, only the allowed decoders."""
    stream.codec_context.options = {
        "max_pixels": str(_decode_pixels(width, height)),
        "codec_whitelist": _decoders(),  # the stream's codec was checked; its decoder too
    }


def probe_video(
    path: str | Path, scan_seconds: float | None = None, max_frames: int = MAX_PROBE_FRAMES
) -> VideoInfo:
    """Stream facts and per-frame timestamps, from packets (only the first frame is decoded,
    for its display matrix: FFmpeg hands the stream's matrix to decoded frames only).

    scan_seconds: stop after that much of the video (its later frames are not listed and
    `complete` is False); None scans the whole file. max_frames: stop after max_frames + 1
    frames (`complete` False), so a caller capping at max_frames sees that the file has more
    without reading all of it (packets without distinct timestamps defeat scan_seconds).
    """
    import av

    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        ctx = stream.codec_context
        _set_decoder(stream, ctx.width, ctx.height)
        orientation: tuple[int, bool] | None = None
        tb = stream.time_base
        start = stream.start_time or 0
        limit = None if scan_seconds is None else start + int(scan_seconds / tb)
        stamps: list[int | None] = []
        past_limit = 0
        capped = False
        try:
            for packet in container.demux(stream):
                if orientation is None:  # until the first frame comes out (a flush packet too)
                    decoded = packet.decode()
                    if decoded:
                        orientation = _orientation(decoded[0], path)
                if packet.size == 0 or packet.is_discard:
                    continue  # flush packets; frames an edit list cuts away
                pts = packet.pts if packet.pts is not None else packet.dts
                stamps.append(pts)
                if limit is not None and pts is not None and pts > limit:
                    past_limit += 1
                    if past_limit > SCAN_REORDER_MARGIN:
                        break
                if len(stamps) > max_frames + SCAN_REORDER_MARGIN:
                    capped = True
                    break
        except av.FFmpegError as exc:
            raise VideoReadError(
                f"video {_name(path)}: damaged after {len(stamps)} frames ({exc})"
            ) from exc
        if orientation is None:  # the scan stopped before a frame came out (or none decodes)
            try:
                decoded = ctx.decode(None)  # flush
            except av.FFmpegError:  # already flushed: read_frames says what does not decode
                decoded = []
            orientation = _orientation(decoded[0], path) if decoded else (0, False)
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
        if capped:
            complete = False
            pts_arr = pts_arr[: max_frames + 1]
        if len(pts_arr) == 0:
            raise VideoReadError(f"video {_name(path)}: the video stream holds no frames")
        times = (pts_arr - start).astype(np.float64) * float(tb)
        if not fps:
            fps = (len(times) - 1) / times[-1] if times[-1] > 0 else 25.0
        if stream.duration:
            duration = float(stream.duration * tb)
        elif container.duration:
            duration = container.duration / 1e6
        else:
            duration = float(times[-1]) + 1 / fps
        rotation, mirrored = orientation
        width, height = ctx.width, ctx.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            path=path,
            codec=ctx.codec.name,
            width=width,
            height=height,
            fps=fps,
            duration=duration,
            timestamps=times,
            pts=pts_arr,
            complete=complete,
            index_frames=int(stream.frames or 0),
            rotation=rotation,
            mirrored=mirrored,
        )


def read_frames(
    path: str | Path,
    indices: Sequence[int],
    info: VideoInfo | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Frames `indices` (presentation order, repeats allowed) as (T, H, W, 3) uint8 RGB, upright.

    One decoding pass from the start that converts only the wanted frames and stops after the
    last; raises VideoReadError if any of them does not come back (truncated or damaged file).
    size: (width, height) as displayed to scale every frame to (area filter, before the turn);
    None keeps the probe's `width`x`height`. Every frame is turned as the probe's first frame
    says (`info.rotation`, `info.mirrored`), so all of them have one size.
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
            f"indices: {wanted_list} reach outside frames 0..{info.num_frames - 1} of {_name(path)}"
        )
    wanted = set(wanted_list)
    last = max(wanted)
    index_of: dict[int, int] = {}
    for i, p in enumerate(info.pts):
        index_of.setdefault(int(p), i)  # a repeated timestamp: its first frame's index
    turned = info.rotation in (90, 270)
    width, height = size or (info.width, info.height)
    if turned:  # scaled in the stored orientation, then turned
        width, height = height, width
    same_size = bitexact_scaling(accurate_rounding=False)
    area = bitexact_scaling("AREA", accurate_rounding=False)
    got: dict[int, np.ndarray] = {}
    position = -1
    with _open(path) as container:
        stream = _video_stream(container, path)
        _set_decoder(stream, *info.stored_size)
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                # by timestamp, so a frame the decoder drops cannot shift the ones after it;
                # a timestamp already passed (a repeat) is the next frame
                at = None if frame.pts is None else index_of.get(frame.pts)
                position = position + 1 if at is None or at <= position else at
                if position in wanted and position not in got:
                    # bit-exact colour conversion: the same pixels on every CPU
                    if (frame.width, frame.height) == (width, height):
                        rgb = frame.to_ndarray(format="rgb24", interpolation=same_size)
                    else:
                        rgb = frame.to_ndarray(
                            format="rgb24", width=width, height=height, interpolation=area
                        )
                    got[position] = _upright(rgb, info.rotation, info.mirrored)
                if position >= last:
                    break
        except av.FFmpegError as exc:
            raise VideoReadError(
                f"video {_name(path)}: decoding failed after frame {position} ({exc}): the file "
                "is damaged, or a frame is larger than the stream's stated "
                f"{'x'.join(map(str, info.stored_size))} (refused)"
            ) from exc
    missing = sorted(wanted - got.keys())
    if missing:
        raise VideoReadError(
            f"video {_name(path)}: frames {missing[:8]}{' ...' if len(missing) > 8 else ''} "
            "did not "
            f"decode (the decoder stopped after frame {position} of the {info.num_frames} the "
            "file lists); the file is truncated or damaged",
            frames_decoded=position + 1,
        )
    first = got[wanted_list[0]]
    out = np.empty((len(wanted_list), *first.shape), first.dtype)  # C order: the turned views
    for k, i in enumerate(wanted_list):  # are copied once (np.stack would keep their strides)
        out[k] = got[i]
    return out


def refuse_larger_frames(info: VideoInfo, max_pixels: int) -> None:
    """ValueError when the stream's stated frames are over `max_pixels` (as displayed)."""
    if info.width * info.height > max_pixels:
        raise ValueError(
            f"video {_name(info.path)} is {info.width}x{info.height}; frames up to "
            f"{max_pixels / 1e6:.0f} MP are accepted: downscale it first"
        )


def _decode_pixels(width: int, height: int) -> int:
    """The decoder's per-frame pixel limit for a stream stated as `width`x`height`."""
    return max(DECODE_PIXELS_FLOOR, DECODE_PIXELS_SLACK * (width + 64) * (height + 64))
