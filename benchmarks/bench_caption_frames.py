"""Caption frame sampling ('chat', 24 frames) vs a full decode by the ffmpeg binary.

    python benchmarks/bench_caption_frames.py [--repeats 5] [--clip video.mp4]

Without --clip, makes a 75 s 30 fps 720x480 H.264 clip (x264 veryfast, B-frames). Times, as
medians of interleaved runs: `ffmpeg -i clip -f null -` (one decoding pass, the floor); cogvx's
load_clip (probe + the frame rule + decode to RGB) for 'chat' and 'base'; and the original
demo's decord reader. Checks that cogvx returns the same frames (indices and pixels) as the
original demo's rule on decord. Prints the ratio (cogvx 'chat' / ffmpeg) last; target <= 1.2x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from cogvx.cogvlm2 import sample_frame_indices
from cogvx.services.caption import load_clip
from cogvx.video import ffmpeg_exe


def ffmpeg_binary() -> str:
    return shutil.which("ffmpeg") or ffmpeg_exe()


def make_clip(path: Path) -> None:
    """75 s, 30 fps, 720x480 H.264 (yuv420p): what a phone or a web page hands over."""
    subprocess.run(
        [
            ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=720x480:rate=30:duration=75",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
            str(path),
        ],
        check=True,
    )  # fmt: skip


def full_decode(path: Path) -> None:
    cmd = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "null"]
    subprocess.run([*cmd, "-"], check=True)


def decord_demo(path: Path, strategy: str) -> tuple[list[int], np.ndarray]:
    """The original demo's load_video: decord timestamps, its frame rule, get_batch."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    stamps = [t[0] for t in vr.get_frame_timestamp(np.arange(len(vr)))]
    idx = sample_frame_indices(len(vr), vr.get_avg_fps(), strategy, timestamps=stamps)
    return idx, vr.get_batch(idx).asnumpy()


def have_decord() -> bool:
    """decord (the demo's reader) is optional here: it is not in the test environment."""
    try:
        import decord  # noqa: F401
    except ImportError:
        print("decord is not installed: its timing and the same-frames check are skipped")
        print("  (pip install decord==0.6.0 to run them; tests use a frozen reference instead)")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clip", type=Path, help="video to use instead of the generated one")
    args = parser.parse_args()
    quiet = lambda _: None  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip
        if clip is None:
            clip = Path(tmp, "clip.mp4")
            t0 = time.perf_counter()
            make_clip(clip)
            print(f"made {clip.name} in {time.perf_counter() - t0:.1f}s")
        runs = {
            "ffmpeg -f null (full decode)": lambda: full_decode(clip),
            "cogvx load_clip 'chat'": lambda: load_clip(clip, "chat", log=quiet),
            "cogvx load_clip 'base'": lambda: load_clip(clip, "base", log=quiet),
        }
        demo = have_decord()
        if demo:
            runs["decord (original demo) 'chat'"] = lambda: decord_demo(clip, "chat")
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):  # interleaved: load from other processes hits all alike
            for name, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        for name, ts in times.items():
            print(
                f"{name:32s} median {med[name]:.3f}s  (runs: {', '.join(f'{t:.2f}' for t in ts)})"
            )
        for strategy in ("chat", "base") if demo else ():
            ours = load_clip(clip, strategy, log=quiet)
            idx, ref = decord_demo(clip, strategy)
            same = ours.indices == idx and np.array_equal(ours.frames, ref)
            print(f"'{strategy}': {len(idx)} frames, same indices and pixels as the demo: {same}")
            if not same:
                raise SystemExit(f"'{strategy}': frames differ from the original demo's")
        floor = med["ffmpeg -f null (full decode)"]
        base, chat = med["cogvx load_clip 'base'"], med["cogvx load_clip 'chat'"]
        one, five, _ = os.getloadavg()
        print(f"load after: {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores")
        print(f"'base' / ffmpeg full decode: {base / floor:.2f}x")
        print(f"ratio ('chat' / ffmpeg full decode): {chat / floor:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
