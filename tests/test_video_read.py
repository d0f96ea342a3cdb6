"""Frame reading (cogvx.video) and the caption clip rules (cogvx.caption.load_clip).

Clips are made here with ffmpeg. The reference is the original CogVLM2 demo's reader: decord
(decord2: same module, FFmpeg 8), its timestamps and its selection of frames.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import decord
import numpy as np
import pytest

from cogvx.caption import (
    MAX_FRAMES,
    CaptionSetupError,
    downscaled_size,
    load_clip,
    plan_caption_memory,
)
from cogvx.cogvlm2 import sample_frame_indices
from cogvx.video import VideoReadError, probe_video, read_frames, write_video

FFMPEG = "/usr/bin/ffmpeg"


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def has_encoder(name: str) -> bool:
    out = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True)
    return f" {name} " in out.stdout


def lavfi_src(seconds: float, fps: float, size: str = "96x64") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Small clips in the codecs and containers a user may send (built once, ~2 s)."""
    d = tmp_path_factory.mktemp("clips")
    h264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    made = {
        "h264.mp4": [*lavfi_src(7.5, 30), "-c:v", "libx264", "-preset", "veryfast",  # B-frames
                     "-pix_fmt", "yuv420p"],
        "hevc.mkv": [*lavfi_src(3, 25), "-c:v", "libx265", "-preset", "ultrafast", "-x265-params",
                     "log-level=error"],
        "vp9.webm": [*lavfi_src(4, 24), "-c:v", "libvpx-vp9", "-deadline", "realtime",
                     "-cpu-used", "8"],
        # variable frame rate: 30 fps for 2 s, then 15 fps
        "vfr.mp4": [*lavfi_src(5, 30), "-vf", "setpts='if(lt(N,60),PTS,PTS*2)'", "-fps_mode", "vfr",
                    *h264],
        "ts.ts": [*lavfi_src(3, 30), *h264, "-f", "mpegts"],  # stream starts at 1.4 s
    }  # fmt: skip
    if has_encoder("libaom-av1"):
        made["av1.mp4"] = [*lavfi_src(2, 24), "-c:v", "libaom-av1", "-cpu-used", "8",
                           "-usage", "realtime"]  # fmt: skip
    for name, args in made.items():
        ffmpeg(*args, str(d / name))
    return {name: d / name for name in made}


def decord_reference(path: Path, strategy: str) -> tuple[list[int], np.ndarray]:
    """The original demo's load_video: decord timestamps, its frame rule, get_batch."""
    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    stamps = [t[0] for t in vr.get_frame_timestamp(np.arange(len(vr)))]
    idx = sample_frame_indices(len(vr), vr.get_avg_fps(), strategy, timestamps=stamps)
    return idx, vr.get_batch(idx).asnumpy()


@pytest.mark.parametrize("strategy", ["chat", "base"])
@pytest.mark.parametrize("name", ["h264.mp4", "hevc.mkv", "vp9.webm", "vfr.mp4", "av1.mp4"])
def test_same_frames_as_the_original_demo(clips, name, strategy):
    if name not in clips:
        pytest.skip("this ffmpeg has no AV1 encoder")
    logs: list[str] = []
    clip = load_clip(clips[name], strategy, log=logs.append)
    idx, ref = decord_reference(clips[name], strategy)
    assert clip.indices == idx
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == ref.shape
    assert np.array_equal(clip.frames, ref)  # bit-identical pixels
    assert f"read {len(idx)} frames ('{strategy}')" in logs[-1]


def test_timestamps_and_facts_match_decord(clips):
    for name in ("h264.mp4", "vfr.mp4", "vp9.webm"):
        info = probe_video(clips[name])
        vr = decord.VideoReader(str(clips[name]))
        stamps = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]
        assert info.num_frames == len(vr) and info.complete
        np.testing.assert_allclose(info.timestamps, stamps, atol=1e-6)
        assert info.fps == pytest.approx(vr.get_avg_fps())
    vfr = probe_video(clips["vfr.mp4"])
    # frames 0-59 every 1/30 s, then frame n at 2n/30 s: a gap from 1.97 s to 4 s, 9.93 s last
    assert vfr.timestamps[-1] == pytest.approx(298 / 30)
    chat = sample_frame_indices(vfr.num_frames, vfr.fps, "chat", timestamps=vfr.timestamps)
    assert chat == [0, 30, 59, 60, 60, 75, 90, 105, 120, 135, 149]  # nearest frame per second


def test_stream_start_offset_is_removed(clips):
    """MPEG-TS streams start at 1.4 s: times count from the stream start, as decord's do."""
    info = probe_video(clips["ts.ts"])
    assert info.timestamps[0] == 0.0
    assert info.timestamps[-1] == pytest.approx(89 / 30, abs=1e-6)
    idx = sample_frame_indices(info.num_frames, info.fps, "chat", timestamps=info.timestamps)
    assert idx == [0, 30, 60, 89]
    frames = read_frames(clips["ts.ts"], idx, info=info)
    with_av = _decode_all(clips["ts.ts"])
    assert np.array_equal(frames, with_av[idx])


def _decode_all(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_read_frames_repeats_and_order(clips):
    path = clips["h264.mp4"]
    everything = _decode_all(path)
    idx = [5, 0, 5, 224, 1]
    frames = read_frames(path, idx)
    assert frames.shape == (5, 64, 96, 3)
    assert np.array_equal(frames, everything[idx])
    with pytest.raises(ValueError, match="reach outside frames 0..224"):
        read_frames(path, [225])
    with pytest.raises(ValueError, match="no frames"):
        read_frames(path, [])


def test_edit_list_frames_cut_away_are_not_counted(clips, tmp_path):
    """`-ss` with stream copy keeps 1.3 s of frames before the cut, marked to be discarded."""
    cut = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.3", "-i", str(clips["h264.mp4"]), "-c", "copy", str(cut))
    info = probe_video(cut)
    shown = _decode_all(cut)
    assert info.num_frames == len(shown) and info.timestamps[0] == 0.0
    assert np.array_equal(read_frames(cut, [0, len(shown) - 1], info=info), shown[[0, -1]])


# ---- bad input ---------------------------------------------------------------------------------


def test_text_file_named_mp4(tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoReadError, match="notes.mp4: not a video file FFmpeg can read"):
        probe_video(bad)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoReadError, match=r"empty.mp4: the file is empty \(0 bytes\)"):
        probe_video(empty)
    with pytest.raises(VideoReadError, match="no such file"):
        probe_video(tmp_path / "nope.mp4")


def test_audio_only_file(tmp_path):
    audio = tmp_path / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(audio))
    with pytest.raises(VideoReadError, match=r"tone.m4a: has no video stream \(found: audio\)"):
        probe_video(audio)


def test_zero_length_videos(clips, tmp_path):
    zero = tmp_path / "zero.mp4"
    ffmpeg(*lavfi_src(1, 10), "-frames:v", "0", "-c:v", "libx264", str(zero))
    with pytest.raises(VideoReadError, match=r"zero.mp4: the file holds no streams"):
        probe_video(zero)
    # an MP4 whose index lists 225 frames, cut where the frame data begin
    fast = tmp_path / "fast.mp4"
    ffmpeg("-i", str(clips["h264.mp4"]), "-c", "copy", "-movflags", "+faststart", str(fast))
    data = fast.read_bytes()
    no_data = tmp_path / "no_data.mp4"
    no_data.write_bytes(data[: data.index(b"mdat") + 4])
    with pytest.raises(VideoReadError, match="no_data.mp4: the video stream holds no frames"):
        probe_video(no_data)
    # a Matroska file cut before its first cluster: FFmpeg finds no stream parameters
    mkv = tmp_path / "full.mkv"
    ffmpeg("-i", str(clips["h264.mp4"]), "-c", "copy", str(mkv))
    data = mkv.read_bytes()
    header_only = tmp_path / "header_only.mkv"
    header_only.write_bytes(data[: data.index(bytes.fromhex("1F43B675"))])
    with pytest.raises(VideoReadError, match="header_only.mkv: the file ends before its first"):
        probe_video(header_only)


def test_unknown_codec(clips, tmp_path):
    """A Matroska track whose codec id names no codec FFmpeg knows (same length, so valid)."""
    mkv = tmp_path / "h264.mkv"
    ffmpeg("-i", str(clips["h264.mp4"]), "-c", "copy", str(mkv))
    odd = tmp_path / "odd.mkv"
    odd.write_bytes(mkv.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_UNKNOWN/CODEC"))
    with pytest.raises(VideoReadError, match="odd.mkv: no decoder for its video codec"):
        probe_video(odd)


def test_truncated_file_is_captioned_as_far_as_it_decodes(clips, tmp_path):
    """moov first (faststart), data cut at 40%: the index lists every frame, the data end early."""
    full = tmp_path / "full.mp4"
    ffmpeg("-i", str(clips["h264.mp4"]), "-c", "copy", "-movflags", "+faststart", str(full))
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.4)])
    info = probe_video(cut)
    assert info.index_frames == 225 and info.num_frames < 225
    logs: list[str] = []
    clip = load_clip(cut, "chat", log=logs.append)
    assert f"index lists 225 frames but only {info.num_frames} are in the file" in logs[0]
    everything = _decode_all(full)
    assert np.array_equal(clip.frames, everything[clip.indices])  # what decodes is right
    # asked directly for a frame the file lists but cannot deliver: a clear error
    with pytest.raises(VideoReadError, match=r"cut.mp4: frames \[\d+\] did not decode") as exc:
        read_frames(cut, [0, info.num_frames - 1], info=info)
    assert exc.value.frames_decoded < info.num_frames
    # moov at the end and the end cut off: nothing to index
    plain = tmp_path / "plain.mp4"
    ffmpeg("-i", str(clips["h264.mp4"]), "-c", "copy", str(plain))
    tail_cut = tmp_path / "tail_cut.mp4"
    tail_cut.write_bytes(plain.read_bytes()[: plain.stat().st_size // 2])
    with pytest.raises(VideoReadError, match="tail_cut.mp4: not a video file FFmpeg can read"):
        probe_video(tail_cut)


def test_long_video_reads_only_what_the_rule_needs(tmp_path):
    """A 2-hour clip (1 fps, tiny): the probe stops after READ_SECONDS; same frames as decord."""
    long = tmp_path / "long.mp4"
    ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=32x32:rate=1:duration=7200",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(long),
    )  # fmt: skip
    logs: list[str] = []
    for strategy in ("chat", "base"):
        clip = load_clip(long, strategy, log=logs.append)
        assert not clip.info.complete and clip.info.num_frames <= 63
        assert clip.info.duration == pytest.approx(7200)
        idx, ref = decord_reference(long, strategy)
        assert clip.indices == idx and np.array_equal(clip.frames, ref)
    assert "lasts 2:00:00; the 'chat' rule sees 24 frames" in logs[0]
    assert "only its first 62 s are read" in logs[0]


def test_small_read_limit_applies_the_same_rule(clips):
    """The cut (read_seconds) is a parameter: with 3 s, a 7.5 s clip is read to 3 s only."""
    logs: list[str] = []
    clip = load_clip(clips["h264.mp4"], "chat", log=logs.append, read_seconds=3)
    assert not clip.info.complete
    assert clip.info.timestamps[-1] <= 3.0
    assert clip.indices == [0, 30, 60, 90]  # seconds 0..3 (round(3.0) + 1 = 4 frames)
    assert "only its first 3 s are read" in logs[0]


def test_huge_frames_are_downscaled_with_a_log_line(clips):
    logs: list[str] = []
    clip = load_clip(clips["h264.mp4"], "chat", log=logs.append, max_pixels=96 * 64 - 1)
    assert clip.frames.shape[1:] == (1080, 1620, 3)  # short side 1080, aspect kept
    assert any("frames are 96x64; downscaled to 1620x1080" in line for line in logs)
    assert downscaled_size(7680, 4320) == (1920, 1080)
    assert downscaled_size(3840, 2160) is None  # 4K UHD is read as is
    assert downscaled_size(4320, 7680) == (1080, 1920)


def test_real_8k_frame_is_downscaled(tmp_path):
    big = tmp_path / "big.mp4"
    ffmpeg(*lavfi_src(0.2, 5, "7680x4320"), "-c:v", "libx264", "-preset", "ultrafast", str(big))
    logs: list[str] = []
    clip = load_clip(big, "base", log=logs.append)
    assert clip.frames.shape == (MAX_FRAMES, 1080, 1920, 3)
    assert "frames are 7680x4320; downscaled to 1920x1080" in "\n".join(logs)


def test_extreme_aspect_ratio_is_refused(tmp_path):
    strip = tmp_path / "strip.mp4"
    write_video(np.zeros((2, 8, 400, 3), np.uint8), strip, fps=2)
    with pytest.raises(ValueError, match=r"strip.mp4: 400x8 has an aspect ratio above 32:1"):
        load_clip(strip, "chat")


def test_bad_strategy(clips):
    with pytest.raises(ValueError, match=r"strategy='every' is not allowed; choose one of"):
        load_clip(clips["h264.mp4"], "every")


# ---- memory plan -------------------------------------------------------------------------------


def test_memory_plan_by_free_vram():
    assert plan_caption_memory(None, True).device == "cpu"
    assert plan_caption_memory(79.0, True).quantize is None
    assert plan_caption_memory(40.0, False).quantize is None
    assert plan_caption_memory(22.0, True).quantize == "int8"
    assert plan_caption_memory(14.0, True).quantize == "nf4"
    assert plan_caption_memory(79.0, True, forced="nf4").quantize == "nf4"
    assert plan_caption_memory(79.0, True, forced="none").quantize is None
    with pytest.raises(CaptionSetupError, match="needs at least ~9.5 GiB even in nf4"):
        plan_caption_memory(6.0, True)
    with pytest.raises(CaptionSetupError, match=r"in bf16 \(bitsandbytes is not installed\)"):
        plan_caption_memory(22.0, False)
    with pytest.raises(CaptionSetupError, match="needs the bitsandbytes package"):
        plan_caption_memory(22.0, False, forced="int8")
    with pytest.raises(CaptionSetupError, match="COGVX_QUANTIZE='fp8' is not allowed"):
        plan_caption_memory(22.0, True, forced="fp8")
