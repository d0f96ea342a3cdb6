"""Encode a generation's frames: cogvx.video.write_video vs diffusers' export_to_video.

    python -m benchmarks.bench_export [--repeats 5] [--sizes 49x480x720,81x768x1360,161x768x1360]

(From the repo root, as a module: it imports tests.support.media, which is not installed.)

Sizes are frames x height x width: 5b's 49 at 480x720 and 1.5's 81 and 161 at 768x1360. For
each it prints both times, PSNR against the source frames, file size and faststart, plus our
writer with x264 on all of this CPU's kernels (what the portable SSE2 kernels cost), then the
speed-up ratio (target >= 1.8x) and the machine's load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cogvx.video import write as video
from cogvx.video import write_video
from tests.support.media import mp4_atoms


def frames_like_a_generation(t: int = 49, h: int = 480, w: int = 720) -> np.ndarray:
    """Float frames in [0, 1] (what a pipeline returns): moving gradients plus fine texture."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    texture = rng.normal(0, 0.03, (h, w)).astype(np.float32)
    out = np.empty((t, h, w, 3), np.float32)
    for i in range(t):
        out[i, ..., 0] = 0.5 + 0.5 * np.sin((x + 6 * i) / 40) + texture
        out[i, ..., 1] = 0.5 + 0.5 * np.cos((y - 4 * i) / 30)
        out[i, ..., 2] = 0.5 + 0.5 * np.sin((x + y + 5 * i) / 60) - texture
    return np.clip(out, 0, 1)


def psnr(path: Path, ref: np.ndarray) -> float:
    import av

    with av.open(str(path)) as c:
        got = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(float)
    mse = np.mean((got - ref.astype(float)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def timed_pair(a, b, repeats: int) -> tuple[float, float]:
    """Medians of a() and b(), run alternately so machine drift hits both alike."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} cores"


def bench_size(t: int, h: int, w: int, repeats: int) -> None:
    from diffusers.utils import export_to_video

    frames = frames_like_a_generation(t, h, w)
    ref = (frames * 255).round().astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = Path(tmp, "ours.mp4"), Path(tmp, "diffusers.mp4")
        all_kernels = Path(tmp, "all_kernels.mp4")
        before = load()
        t_ours, t_theirs = timed_pair(
            lambda: write_video(frames, ours, fps=8),
            lambda: export_to_video(list(frames), str(theirs), fps=8),
            repeats,
        )
        t_all, t_ours2 = timed_pair(
            lambda: video._encode_av(frames, all_kernels, 8, "mp4", 80, x264_params="asm=auto"),
            lambda: write_video(frames, ours, fps=8),
            repeats,
        )
        print(f"-- {t} frames {h}x{w} ({before} before, {load()} after)")
        rows = (("cogvx", ours, t_ours), ("diffusers", theirs, t_theirs))
        for name, path, took in (*rows, ("cogvx, x264 all kernels", all_kernels, t_all)):
            atoms = mp4_atoms(path)
            fast = atoms.index("moov") < atoms.index("mdat")
            print(
                f"{name:24s} {took:.3f}s  psnr {psnr(path, ref):.2f} dB  "
                f"size {path.stat().st_size / 1e6:.2f} MB  faststart={fast}"
            )
        print(f"portable x264 kernels cost: {t_ours2 / t_all:.2f}x the time of all kernels")
        print(f"ratio (export_to_video / write_video) at {t}x{h}x{w}: {t_theirs / t_ours:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="49x480x720,81x768x1360,161x768x1360")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        t, h, w = (int(v) for v in size.split("x"))
        bench_size(t, h, w, args.repeats)


if __name__ == "__main__":
    main()
