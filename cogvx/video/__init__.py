"""Video files: `write` (frames → MP4/WebM/GIF, byte-reproducible), `read` (probe + decode with
PyAV, container and codec allow-lists), `output` (the per-prediction output file, its log and
metrics)."""

from cogvx.video.output import fresh_output_path, save_video
from cogvx.video.read import (
    ACCEPTED,
    DEMUXERS,
    VIDEO_CODECS,
    VideoInfo,
    VideoReadError,
    probe_video,
    read_frames,
    refuse_larger_frames,
)
from cogvx.video.write import (
    OUTPUT_FORMATS,
    bitexact_scaling,
    ffmpeg_exe,
    to_uint8_frames,
    write_video,
)

__all__ = [
    "ACCEPTED",
    "DEMUXERS",
    "OUTPUT_FORMATS",
    "VIDEO_CODECS",
    "VideoInfo",
    "VideoReadError",
    "bitexact_scaling",
    "ffmpeg_exe",
    "fresh_output_path",
    "probe_video",
    "read_frames",
    "refuse_larger_frames",
    "save_video",
    "to_uint8_frames",
    "write_video",
]
