"""Record the frozen reference in this folder (run by hand, once; the tests never run it).

What the reference is: the original CogVLM2 demo's frame reader run on the committed clips. The
demo's `load_video` opens the file with decord, takes its per-frame timestamps and average frame
rate, applies the frame rule and calls `get_batch`:

    vr = decord.VideoReader(path, ctx=decord.cpu(0))
    stamps = [t[0] for t in vr.get_frame_timestamp(np.arange(len(vr)))]
    idx = sample_frame_indices(len(vr), vr.get_avg_fps(), strategy, timestamps=stamps)
    frames = vr.get_batch(idx).asnumpy()

`sample_frame_indices` is `cogvx/cogvlm2/sampling.py`, loaded from its file (it needs only numpy).

Readers (each runs in its own throwaway venv, never in the project's .venv; both wheels install
a module named `decord`, so they cannot share one):
- decord 0.6.0, the reader the original demo used (FFmpeg 4.1 inside the wheel). It records
  timestamps, fps, indices and frames for every clip it can open. It cannot open AV1.
- decord2 3.4.0 (FFmpeg 8 inside). It records the AV1 clip (timestamps, fps, indices, frames) and
  cross-checks decord 0.6.0 on every other clip. Its `get_batch` fails on some clips and CPUs
  ("DECORDArrayCopyFromTo: The size must exactly match": here for 96- and 32-pixel-wide frames);
  where it works its frames are compared. Were it to fail on AV1, the ffmpeg CLI's frames are used.
- The system ffmpeg CLI (`ffmpeg -i clip -fps_mode passthrough -f rawvideo -pix_fmt rgb24 -`)
  cross-checks the stored frames of every clip.

    python3 -m venv /tmp/decord-venv && /tmp/decord-venv/bin/pip install decord==0.6.0
    python3 -m venv /tmp/decord2-venv && /tmp/decord2-venv/bin/pip install decord2==3.4.0
    .venv/bin/python tests/data/video_read/make_reference.py \
        --decord /tmp/decord-venv/bin/python --decord2 /tmp/decord2-venv/bin/python

writes reference.json (indices, fps, frame counts, clip hashes, readers, cross-checks) and
reference.npz (decord's (N, 2) float32 timestamps, and the selected frames as uint8).

`--make-clips` first re-encodes the clips with the system ffmpeg (recipes in CLIPS). Encoder
output depends on the machine (threads, SIMD), so new clips need a new reference: the committed
clips and reference belong together (reference.json holds each clip's sha256).

Recorded 2026-12-01 on Debian 12 x86_64 (Intel Xeon, AVX-512, 2 cores), Python 3.11.7, numpy
2.4.6: decord 0.6.0 (libavcodec 58.35.100), decord2 3.4.0 (libavcodec 62.28.101), ffmpeg
5.1.9-0+deb12u1 (which also made the clips; libaom-av1 for AV1). Every cross-check agreed:
decord2's timestamps, fps and indices equal decord 0.6.0's on all six clips both read, and every
stored frame equals decord2's (where its get_batch works) and the ffmpeg CLI's bit for bit.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SAMPLING = HERE.parents[2] / "cogvx" / "cogvlm2" / "sampling.py"
FFMPEG = "/usr/bin/ffmpeg"
STRATEGIES = ("chat", "base")
NEIGHBOURS = 3  # as in tests/video/test_video_read.py: each stored frame must differ from these
MIN_NEIGHBOUR_MAD = 1.5  # mean abs difference to any of them (a shifted frame shows)


def _src(seconds: float, fps: float, size: str = "96x64") -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}"]


_H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
# testsrc2; the clips other than H.264 (96x64, which the tests scale) are scaled to 64x32 to keep
# the stored frames small, with the hue turning once a second so that no two neighbouring frames
# are alike (at 64x32 testsrc2's moving parts vanish). x265 writes out of bounds at 48x32.
SMALL = "scale=64:32,hue=H=2*PI*t"
CLIPS: dict[str, list[str]] = {
    # 7.5 s, 30 fps, B-frames (veryfast), one keyframe
    "h264.mp4": [*_src(7.5, 30), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
    "hevc.mkv": [*_src(3, 25), "-vf", SMALL, "-c:v", "libx265", "-preset", "ultrafast",
                 "-x265-params", "log-level=error"],
    "vp9.webm": [*_src(4, 24), "-vf", SMALL, "-c:v", "libvpx-vp9", "-deadline", "realtime",
                 "-cpu-used", "8"],
    # variable frame rate: 30 fps for 2 s, then 15 fps
    "vfr.mp4": [*_src(5, 30), "-vf", SMALL + ",setpts='if(lt(N,60),PTS,PTS*2)'", "-fps_mode",
                "vfr", *_H264],
    "av1.mp4": [*_src(2, 24), "-vf", SMALL, "-c:v", "libaom-av1", "-cpu-used", "8", "-usage",
                "realtime"],
    "ts.ts": [*_src(3, 30), "-vf", SMALL, *_H264, "-f", "mpegts"],  # the stream starts at 1.4 s
    # 2 hours at 1 fps, 32x32: moving test pattern for 64 s (the hue turning every 7 s, as
    # testsrc2 alone repeats within 2 s here), then that frame held (skip frames, ~14 bytes
    # each) so the file stays small; one keyframe
    "long.mp4": [*_src(64, 1, "32x32"), "-vf",
                 "hue=H=2*PI*t/7,tpad=stop_mode=clone:stop_duration=7136",
                 "-c:v", "libx264", "-preset", "veryslow", "-x264-params", "keyint=infinite",
                 "-pix_fmt", "yuv420p"],
}  # fmt: skip


# ---- workers: run under a reader's venv python ------------------------------------------------


def _load_rule():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampling", SAMPLING)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.sample_frame_indices


def worker(mode: str, clip: str, out: str) -> None:
    """decord's view of one clip -> npz: facts, per-strategy indices, get_batch frames."""
    import decord

    rule = _load_rule()
    vr = decord.VideoReader(clip, ctx=decord.cpu(0))
    stamps = vr.get_frame_timestamp(np.arange(len(vr)))
    result = {
        "version": np.array(decord.__version__),
        "num_frames": np.array(len(vr)),
        "avg_fps": np.array(vr.get_avg_fps(), dtype=np.float64),
        "timestamps": np.asarray(stamps),
    }
    for strategy in STRATEGIES:
        idx = rule(len(vr), vr.get_avg_fps(), strategy, timestamps=[t[0] for t in stamps])
        result[f"{strategy}/indices"] = np.array(idx, dtype=np.int64)
        try:
            result[f"{strategy}/frames"] = vr.get_batch(idx).asnumpy()
        except Exception as exc:  # decord2 on some CPUs
            if mode == "demo":
                raise
            result[f"{strategy}/error"] = np.array(_error_line(str(exc)))
    np.savez_compressed(out, **result)


# ---- driver ------------------------------------------------------------------------------------


def _error_line(text: str) -> str:
    """An error's message without decord's "[hh:mm:ss] " prefix (so reruns give the same JSON)."""
    return re.sub(r"\[\d\d:\d\d:\d\d\] ", "", text.strip().split("\n")[0])[-300:]


def run_worker(python: str, mode: str, clip: Path) -> dict[str, np.ndarray] | str:
    """The worker's npz as a dict, or its error (last line) when the reader cannot read the clip."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        proc = subprocess.run(
            [python, __file__, "--worker", mode, str(clip), str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return _error_line(lines[-1]) if lines else f"exit {proc.returncode}"
        with np.load(out) as data:
            return {k: data[k] for k in data.files}


def ffmpeg_frames(clip: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(clip), "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def frame_size(clip: Path) -> tuple[int, int]:
    out = subprocess.run(
        [FFMPEG.replace("ffmpeg", "ffprobe"), "-v", "error", "-select_streams", "v:0",
         "-show_entries", "stream=width,height", "-of", "csv=p=0", str(clip)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    w, h = out.split()[0].split(",")[:2]  # MPEG-TS: the stream is listed once per program
    return int(w), int(h)


def libavcodec(python: str) -> str:
    """The libavcodec a decord wheel bundles (its file name carries the version)."""
    code = (
        "import decord, pathlib; p = pathlib.Path(decord.__file__).parent.parent; "
        "print(*sorted(f.name for d in p.glob('decord*.libs') for f in d.glob('libavcodec*')))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.split()
    return out[0].split(".so.")[-1] if out else "?"


def _cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", info)
    simd = "AVX-512" if " avx512f" in info else "AVX2" if " avx2" in info else "no AVX2"
    return f"{model.group(1) if model else '?'}, {simd}, {os.cpu_count()} cores"


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs_diff": int(d.max()), "mean_abs_diff": round(float(d.mean()), 6)}


def record(decord_py: str, decord2_py: str, log=print) -> None:
    ffmpeg_version = subprocess.run(
        [FFMPEG, "-version"], capture_output=True, text=True
    ).stdout.split(" Copyright")[0]
    meta: dict = {
        "recorded": {
            "date": datetime.date.today().isoformat(),
            "by": "tests/data/video_read/make_reference.py",
            "machine": f"{platform.system()} {platform.machine()}, {_cpu()}",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "decord": f"0.6.0 (libavcodec {libavcodec(decord_py)})",
            "decord2": f"3.4.0 (libavcodec {libavcodec(decord2_py)})",
            "ffmpeg": ffmpeg_version,
            "rule": "cogvx.cogvlm2.sample_frame_indices(len(vr), vr.get_avg_fps(), strategy, "
            "timestamps=[t[0] for t in vr.get_frame_timestamp(np.arange(len(vr)))])",
            "frames": "vr.get_batch(indices).asnumpy(), one call per strategy",
        },
        "clips": {},
    }
    arrays: dict[str, np.ndarray] = {}
    for name, recipe in CLIPS.items():
        clip = HERE / name
        if not clip.exists():
            log(f"{name}: missing, skipped")
            continue
        entry: dict = {
            "sha256": hashlib.sha256(clip.read_bytes()).hexdigest(),
            "bytes": clip.stat().st_size,
            "recipe": "ffmpeg " + " ".join(recipe) + f" {name}",
        }
        checks: dict = {}
        ref = run_worker(decord_py, "demo", clip)
        other = run_worker(decord2_py, "meta", clip)
        width, height = frame_size(clip)
        cli = ffmpeg_frames(clip, width, height)
        if isinstance(ref, dict):
            entry["timestamps_from"] = entry["indices_from"] = "decord 0.6.0"
            entry["frames_from"] = "decord 0.6.0 get_batch"
        else:
            checks["decord 0.6.0"] = f"cannot read it: {ref}"
            if not isinstance(other, dict):
                raise SystemExit(f"{name}: neither decord reads it: {ref} / {other}")
            ref, other = other, None
            entry["timestamps_from"] = entry["indices_from"] = "decord2 3.4.0"
            if "chat/frames" in ref:
                entry["frames_from"] = "decord2 3.4.0 get_batch"
            else:
                entry["frames_from"] = "ffmpeg CLI (-pix_fmt rgb24), decord2's get_batch failed"
                for s in STRATEGIES:
                    ref[f"{s}/frames"] = cli[ref[f"{s}/indices"]]
        n = int(ref["num_frames"])
        entry["num_frames"] = n
        entry["avg_fps"] = float(ref["avg_fps"])
        entry["width"], entry["height"] = width, height
        entry["indices"] = {s: ref[f"{s}/indices"].tolist() for s in STRATEGIES}
        # the frames each strategy's get_batch returned, stored once per index
        union = sorted(set(entry["indices"]["chat"]) | set(entry["indices"]["base"]))
        frames: dict[int, np.ndarray] = {}
        for s in STRATEGIES:
            for i, f in zip(entry["indices"][s], ref[f"{s}/frames"], strict=True):
                if i in frames and not np.array_equal(frames[i], f):
                    raise SystemExit(f"{name}: frame {i} differs between get_batch calls")
                frames[i] = f
        stored = np.stack([frames[i] for i in union])
        arrays[f"{name}/timestamps"] = ref["timestamps"].astype(np.float32)
        arrays[f"{name}/frame_index"] = np.array(union, dtype=np.int64)
        arrays[f"{name}/frames"] = stored

        # cross-checks with the other readers
        if isinstance(other, dict):
            same = (
                int(other["num_frames"]) == n
                and float(other["avg_fps"]) == entry["avg_fps"]
                and np.array_equal(other["timestamps"], ref["timestamps"])
            )
            same_idx = all(
                other[f"{s}/indices"].tolist() == entry["indices"][s] for s in STRATEGIES
            )
            got = "timestamps, fps and frame count equal" if same else "facts DIFFER"
            got += ", indices equal" if same_idx else ", indices DIFFER"
            if "chat/frames" in other:
                both = np.concatenate([other[f"{s}/frames"] for s in STRATEGIES])
                mine = np.concatenate([ref[f"{s}/frames"] for s in STRATEGIES])
                got += f", frames {diff_stats(both, mine)}"
            else:
                got += f"; get_batch failed: {other.get('chat/error', '?')}"
            checks["decord2 3.4.0"] = got
        elif other is not None:
            checks["decord2 3.4.0"] = f"cannot read it: {other}"
        # the tests require each returned frame to be nearer its reference than its neighbours
        near = min(
            diff_stats(cli[i], cli[j])["mean_abs_diff"]
            for i in union
            for j in range(max(0, i - NEIGHBOURS), min(len(cli), i + NEIGHBOURS + 1))
            if j != i
        )
        if near < MIN_NEIGHBOUR_MAD:
            raise SystemExit(f"{name}: a stored frame is {near} from a neighbour; change the clip")
        entry["min_neighbour_mean_abs_diff"] = near
        if "ffmpeg CLI" not in entry["frames_from"]:
            if len(cli) != n:
                checks["ffmpeg CLI"] = f"{len(cli)} frames decoded, decord lists {n}"
            else:
                checks["ffmpeg CLI"] = {"frames": len(union), **diff_stats(cli[union], stored)}
        else:
            checks["ffmpeg CLI"] = f"{len(cli)} frames decoded, decord2 lists {n}"
        entry["cross_checks"] = checks
        meta["clips"][name] = entry
        log(f"{name}: {n} frames, {entry['avg_fps']:g} fps, {len(union)} frames stored; {checks}")
    np.savez_compressed(HERE / "reference.npz", **arrays)
    (HERE / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


def make_clips() -> None:
    for name, recipe in CLIPS.items():
        subprocess.run(
            [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", *recipe, str(HERE / name)],
            check=True,
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decord", required=True, help="python of a venv with decord==0.6.0")
    parser.add_argument("--decord2", required=True, help="python of a venv with decord2==3.4.0")
    parser.add_argument("--make-clips", action="store_true", help="re-encode the clips first")
    args = parser.parse_args()
    if args.make_clips:
        make_clips()
    record(args.decord, args.decord2)


if __name__ == "__main__":
    main()
