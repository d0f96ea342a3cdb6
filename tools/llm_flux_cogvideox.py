"""LLM -> FLUX -> CogVideoX-5b-I2V in batch: N prompts, a first frame each, a video each.

python tools/llm_flux_cogvideox.py --llm-weights W --flux-weights W --video-weights W \\
    --num-videos 4 --topic "a rainy city at night" --out DIR
python tools/llm_flux_cogvideox.py --prompts prompts.txt --flux-weights W --video-weights W \\
    --out DIR

Each W is a folder or a tarball URL (like COG_WEIGHTS). DIR gets NNNN.png, NNNN.mp4,
manifest.json (settings; each item's prompt, image, video, seeds: the same run writes the same
bytes) and timings.json (seconds per stage); a rerun with the same settings skips finished items
(other settings, --size included, are refused: they would mix two batches).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cogvx.errors import CogvxError
from cogvx.services.storyboard import Settings, run_batch


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llm-weights", help="instruct LLM (not needed with --prompts)")
    ap.add_argument("--flux-weights", required=True, help="FLUX.1-dev diffusers folder or tar URL")
    ap.add_argument("--video-weights", help="CogVideoX-5b-I2V weights (default: the seed tarball)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--num-videos", type=int, default=1)
    ap.add_argument("--topic", default="nature")
    ap.add_argument("--prompts", type=Path, help="a text file, one prompt per line (no LLM)")
    ap.add_argument("--words", type=int, default=120, help="longest LLM prompt, in words")
    ap.add_argument("--seed", type=int, default=0, help="item i uses seed+i, +1000+i, +2000+i")
    ap.add_argument("--image-steps", type=int, default=28)
    ap.add_argument("--video-steps", type=int, default=50)
    ap.add_argument("--size", default="720x480", help="first-frame size WxH (the I2V model's)")
    args = ap.parse_args(argv)
    prompts = None
    if args.prompts:
        prompts = [p.strip() for p in args.prompts.read_text().splitlines() if p.strip()]
        if not prompts:
            print(f"{args.prompts}: no prompts in it", file=sys.stderr)
            return 2
    if args.num_videos < 1:
        print("--num-videos must be at least 1", file=sys.stderr)
        return 2
    w, _, h = args.size.partition("x")
    if not (w.isdecimal() and h.isdecimal() and int(w) > 0 and int(h) > 0):
        print(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 720x480", file=sys.stderr)
        return 2
    settings = Settings(
        num_videos=args.num_videos, topic=args.topic, prompts=prompts, words=args.words,
        seed=args.seed, image_steps=args.image_steps, video_steps=args.video_steps,
        size=(int(w), int(h)),
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        items = run_batch(
            settings, args.out, args.llm_weights, args.flux_weights, args.video_weights
        )
    except (ValueError, CogvxError) as exc:
        print(f"llm_flux_cogvideox.py: {exc}", file=sys.stderr)
        return 2
    print(f"{len(items)} videos in {args.out} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
