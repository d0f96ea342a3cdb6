"""Frame reading (cogvx.video) and the caption clip rules (cogvx.services.caption.load_clip).

The clips are committed in tests/data/video_read/ (encoders' output differs from machine to
machine, so they are not made here). So is the reference: the original CogVLM2 demo's reader run
once on them (make_reference.py there; decord 0.6.0, the demo's reader, and decord2 for AV1):
decord's timestamps and average fps, the frames its rule picks per strategy, and the frames it
returned. Indices match it exactly and timestamps to 1e-6. Pixels may differ by a few units
across CPUs (swscale's SIMD YUV->RGB kernels), so they are compared with a small tolerance and
each frame must be nearer its own reference than any neighbouring frame; on one machine the
frames equal PyAV decoding the whole clip (converted as read_frames converts) bit for bit.
Derived files (cuts, truncations, remuxes) come from the committed clips with `-c copy`;
throwaway input with no oracle is still encoded here.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cogvx.cogvlm2 import sample_frame_indices
from cogvx.services.caption import (
    MAX_FRAMES,
    CaptionSetupError,
    downscaled_size,
    load_clip,
    plan_caption_memory,
)
from cogvx.video import VideoReadError, bitexact_scaling, probe_video, read_frames, write_video
from tests.support.video_reference import DATA, REFERENCE, reference_arrays
from tests.support.video_reference import reference_frames as frozen_frames

FFMPEG = "/usr/bin/ffmpeg"
# Pixels against the frozen frames. FFmpeg's default YUV->RGB conversion (what decord and plain
# PyAV use) here equals the reference bit for bit on every clip. With its SIMD kernels forced off
# (av_force_cpu_flags, i.e. its C code, as on an x86 CPU without SSSE3) it differs by at most 3
# and 0.52 on average (0.58 in the worst frame). Within NEIGHBOURS of a stored frame, every other
# frame of these clips is >= 1.55 away on average (reference.json, min_neighbour_mean_abs_diff).
MAX_ABS_DIFF = 4
MEAN_ABS_DIFF = 1.0
NEIGHBOURS = 3  # frames each side that a returned frame must be farther from than its reference


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def lavfi_src(seconds: float, fps: float, size: str = "96x64") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]


@pytest.fixture(scope="module")
def clips() -> dict[str, Path]:
    """The committed clips (H.264 with B-frames, HEVC, VP9, VFR, AV1, MPEG-TS, 2 hours)."""
    return {name: DATA / name for name in REFERENCE}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """decord's timestamps ((N, 2) float32 start/end) and frames, keyed '<clip>/<what>'."""
    return reference_arrays()


def reference_frames(reference: dict[str, np.ndarray], name: str, idx: list[int]) -> np.ndarray:
    """The frames decord returned for `idx` (each index's frame is stored once)."""
    return frozen_frames(name, idx)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_like_reference(frames, ref, idx, decoded) -> None:
    """Within the tolerance of decord's frames, and no returned frame nearer a neighbour.

    decoded: this machine's PyAV decode of the clip (the frames around each index)."""
    assert frames.dtype == np.uint8 and frames.shape == ref.shape
    diff = np.abs(frames.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= MAX_ABS_DIFF and diff.mean() < MEAN_ABS_DIFF, (diff.max(), diff.mean())
    for k, i in enumerate(idx):
        own = _mad(frames[k], ref[k])
        for j in range(max(0, i - NEIGHBOURS), min(len(decoded), i + NEIGHBOURS + 1)):
            if j != i:
                assert _mad(frames[k], decoded[j]) > own, (
                    f"frame {i}: nearer frame {j} than its reference"
                )


def test_reference_is_for_the_committed_clips():
    for name, entry in REFERENCE.items():
        data = (DATA / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name}: re-record it"
    assert set(REFERENCE) >= {"h264.mp4", "hevc.mkv", "vp9.webm", "vfr.mp4", "av1.mp4", "long.mp4"}


@pytest.mark.parametrize("strategy", ["chat", "base"])
@pytest.mark.parametrize(
    "name", ["h264.mp4", "hevc.mkv", "vp9.webm", "vfr.mp4", "av1.mp4", "ts.ts"]
)
def test_same_frames_as_the_original_demo(clips, reference, name, strategy):
    logs: list[str] = []
    clip = load_clip(clips[name], strategy, log=logs.append)
    idx = REFERENCE[name]["indices"][strategy]
    assert clip.indices == idx
    decoded = _decode_all(clips[name])
    assert np.array_equal(clip.frames, decoded[idx])  # same library, same machine: bit-identical
    assert_like_reference(clip.frames, reference_frames(reference, name, idx), idx, decoded)
    assert f"read {len(idx)} frames ('{strategy}')" in logs[-1]


def test_timestamps_and_facts_match_decord(clips, reference):
    for name in ("h264.mp4", "hevc.mkv", "vp9.webm", "vfr.mp4", "av1.mp4", "ts.ts"):
        info = probe_video(clips[name])
        assert info.num_frames == REFERENCE[name]["num_frames"] and info.complete, name
        np.testing.assert_allclose(
            info.timestamps, reference[f"{name}/timestamps"][:, 0], atol=1e-6
        )
        assert info.fps == pytest.approx(REFERENCE[name]["avg_fps"], abs=1e-6), name
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


def _decode_all(path: Path, frames: int | None = None) -> np.ndarray:
    """PyAV's decode of the clip (its first `frames` frames), in presentation order.

    Converted to RGB as read_frames converts a frame it does not scale, so equal bit for bit."""
    import av

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            flags = bitexact_scaling(accurate_rounding=False)  # as read_frames reads
            out.append(f.to_ndarray(format="rgb24", interpolation=flags))
            if len(out) == frames:
                break
    return np.stack(out)


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


def test_long_video_reads_only_what_the_rule_needs(clips, reference):
    """A 2-hour clip (1 fps, tiny): the probe stops after READ_SECONDS; same frames as decord."""
    long = clips["long.mp4"]
    ref = REFERENCE["long.mp4"]
    decoded = _decode_all(long, frames=70)  # the frames the rules can pick, and neighbours
    logs: list[str] = []
    for strategy in ("chat", "base"):
        clip = load_clip(long, strategy, log=logs.append)
        assert not clip.info.complete and clip.info.num_frames <= 63
        assert clip.info.index_frames == ref["num_frames"] == 7200
        assert clip.info.duration == pytest.approx(7200)
        assert clip.info.fps == pytest.approx(ref["avg_fps"], abs=1e-6)
        stamps = reference["long.mp4/timestamps"][: clip.info.num_frames, 0]
        np.testing.assert_allclose(clip.info.timestamps, stamps, atol=1e-6)
        idx = ref["indices"][strategy]
        assert clip.indices == idx
        assert np.array_equal(clip.frames, decoded[idx])
        ref_frames = reference_frames(reference, "long.mp4", idx)
        assert_like_reference(clip.frames, ref_frames, idx, decoded)
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
    clip = load_clip(clips["h264.mp4"], "chat", log=logs.append, max_pixels=96 * 64 // 4)
    assert clip.frames.shape[1:] == (32, 48, 3)  # to the pixel limit, aspect kept
    assert any("frames are 96x64; downscaled to 48x32" in line for line in logs)
    assert downscaled_size(7680, 4320) == (1920, 1080)
    assert downscaled_size(3840, 2160) is None  # 4K UHD is read as is
    assert downscaled_size(4320, 7680) == (1080, 1920)
    w, h = downscaled_size(16000, 600)  # a strip: short side 1080 would scale it up 1.8x
    assert (w, h) == (14872, 556) and w * h <= 3840 * 2160


def test_real_8k_frame_is_downscaled(tmp_path):
    big = tmp_path / "big.mp4"
    ffmpeg(*lavfi_src(0.2, 5, "7680x4320"), "-c:v", "libx264", "-preset", "ultrafast", str(big))
    logs: list[str] = []
    clip = load_clip(big, "base", log=logs.append)
    assert clip.frames.shape == (MAX_FRAMES, 1080, 1920, 3)
    assert "frames are 7680x4320; downscaled to 1920x1080" in "\n".join(logs)


def _mux_packets(path: Path, packets: list[bytes], pts: list[int], codec: str, size: int) -> None:
    """Write already-encoded frames with the given timestamps (1/1000 s) and a stated size."""
    import fractions

    import av

    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
        for data, t in zip(packets, pts, strict=True):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, t, t, tb
            out.mux(packet)


def _encoded(codec: str, size: int, value: int) -> bytes:
    import fractions

    import av

    ctx = av.CodecContext.create(codec, "w")
    ctx.width = ctx.height = size
    ctx.pix_fmt = "rgb24" if codec == "png" else "yuvj420p"
    ctx.time_base = fractions.Fraction(1, 25)
    frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), value, np.uint8), format="rgb24")
    return bytes(ctx.encode(frame.reformat(format=ctx.pix_fmt))[0])


def test_frames_larger_than_the_stated_size_are_refused(tmp_path):
    grow = tmp_path / "grow.avi"  # states 64x64 (what callers cap), then carries 2048x2048 frames
    small, big = _encoded("png", 64, 90), _encoded("png", 2048, 90)
    _mux_packets(grow, [small, big, big], [0, 40, 80], "png", 64)
    info = probe_video(grow)
    assert (info.width, info.height, info.num_frames) == (64, 64, 3)
    with pytest.raises(VideoReadError, match=r"a frame is larger than the stream's stated 64x64"):
        read_frames(grow, [0, 1, 2], info=info)


def test_a_repeated_timestamp_is_the_next_frame(tmp_path):
    dup = tmp_path / "dup.mkv"
    _mux_packets(dup, [_encoded("mjpeg", 32, 40 * i) for i in range(5)], [0, 40, 40, 80, 120],
                 "mjpeg", 32)  # fmt: skip
    frames = read_frames(dup, range(5))
    assert [round(float(f.mean()) / 40) for f in frames] == [0, 1, 2, 3, 4]


def test_a_probe_stops_after_max_frames(tmp_path):
    same = tmp_path / "same.mkv"  # every packet at t = 0: scan_seconds cannot stop the scan
    _mux_packets(same, [_encoded("mjpeg", 32, 9)] * 400, [0] * 400, "mjpeg", 32)
    info = probe_video(same, scan_seconds=1.0, max_frames=100)
    assert (info.num_frames, info.complete) == (101, False)
    assert probe_video(same).num_frames == 400


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
