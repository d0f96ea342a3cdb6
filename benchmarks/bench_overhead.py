"""A prediction through the T2V Runner vs the bare diffusers pipeline call, tiny model.

    python benchmarks/bench_overhead.py [--frames 49 --steps 50 --repeats 5]

Both sides run the same pipeline with the same arguments and seed; the Runner adds input checks,
token counting, seeding, uint8 conversion, H.264 encoding and output bookkeeping. Prints the
median of each and the ratio last (target <= 1.05x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cogvx.gpu import cpu_generator  # noqa: E402
from cogvx.tiny import save_tiny_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--steps", type=int, default=50)  # the Runner's default
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COGVX_OUTPUT_DIR"] = str(Path(tmp, "out"))
        os.environ["COGVX_WEIGHTS_CACHE"] = str(Path(tmp, "cache"))
        folder = save_tiny_weights("t2v-5b", Path(tmp, "tiny"))
        from predict_t2v.predict import Runner

        runner = Runner()
        runner.setup(weights=str(folder))
        model = runner.service.model
        pipe, v = model.pipe, model.variant
        prompt = "a cat on the dog in the garden"
        inputs = dict(
            prompt=prompt,
            negative_prompt="",
            num_frames=args.frames,
            num_inference_steps=args.steps,
            guidance_scale=6.0,
            use_dynamic_cfg=True,
            seed=42,
            fps=8,
            output_format="mp4",
            output_quality=80,
        )

        def bare() -> None:
            with torch.inference_mode():
                pipe(
                    prompt=prompt,
                    num_frames=args.frames,
                    num_inference_steps=args.steps,
                    guidance_scale=6.0,
                    use_dynamic_cfg=True,
                    height=v.height,
                    width=v.width,
                    generator=cpu_generator(42),
                    max_sequence_length=v.max_tokens,
                    output_type="np",
                )

        def through_runner() -> None:
            runner._run(dict(inputs))

        pipe.set_progress_bar_config(disable=True)
        bare(), through_runner()  # warm-up
        t_bare, t_runner = [], []
        for _ in range(args.repeats):  # interleaved so drift hits both sides alike
            for fn, acc in ((bare, t_bare), (through_runner, t_runner)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        b, r = statistics.median(t_bare), statistics.median(t_runner)
        print(
            f"bare pipeline call: {b:.3f}s   runner prediction: {r:.3f}s (median of {args.repeats})"
        )
        print(
            f"fixed cost of a prediction (checks, seeding, uint8, encoding): {1e3 * (r - b):.0f} ms"
        )
        print(f"ratio (runner / bare): {r / b:.3f}x")


if __name__ == "__main__":
    main()
