"""Batched captioning vs one clip at a time: clips/s on the tiny CogVLM2 (CPU).

    python -m benchmarks.bench_caption_batch [--clips 16 --tokens 32 --repeats 3]

(From the repo root, as a module: it imports tests.support, not installed.)

The same generated clips (2-4 s, 48x32, 8 fps, 'chat': 3-5 frames each), prompt and greedy
decoding on every side, through `cogvx.services.caption_batch.caption_many` (reader pool of 2
threads decoding ahead): batch size 1 vs 4 vs 8, interleaved per repeat, medians. The tiny
model's layers are narrow, so a row costs little and batching mostly saves per-call overhead;
on a GPU the full-size model is memory-bound in decoding, where batching pays most
(not yet measured on a GPU). Captions are checked equal across batch sizes. Ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cogvx.services.caption import CaptionService
from cogvx.services.caption_batch import caption_many
from cogvx.video import write_video
from tests.support.e2e import tiny_caption_folder

SIZES = (1, 4, 8)


def make_clips(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        frames = rng.integers(0, 255, (8 * (2 + i % 3), 32, 48, 3), dtype=np.uint8)
        out.append(write_video(frames, root / f"c{i}.mp4", fps=8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    service = CaptionService(str(tiny_caption_folder(root / "caption")), log=lambda _: None)
    clips = make_clips(root, args.clips)
    print(f"torch threads: {torch.get_num_threads()}; {args.clips} clips, {args.tokens} tokens")
    times: dict[int, list[float]] = {b: [] for b in SIZES}
    captions: dict[int, list] = {}
    for _ in range(args.repeats):
        for b in SIZES:
            t0 = time.perf_counter()
            rows = list(caption_many(service, clips, "Describe.", max_new_tokens=args.tokens,
                                     batch_size=b))  # fmt: skip
            times[b].append(time.perf_counter() - t0)
            captions[b] = [r.caption for r in rows]
    assert all(captions[b] == captions[1] for b in SIZES), "batched captions differ"
    base = args.clips / statistics.median(times[1])
    print("\n| batch size | median s | clips/s |")
    print("| --- | --- | --- |")
    for b in SIZES:
        seconds = statistics.median(times[b])
        print(f"| {b} | {seconds:.2f} | {args.clips / seconds:.1f} |")
    print("\nratios (clips/s batched / one at a time):")
    for b in SIZES[1:]:
        print(f"  batch {b}: {args.clips / statistics.median(times[b]) / base:.2f}x")


if __name__ == "__main__":
    main()
