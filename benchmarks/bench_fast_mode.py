"""fast_mode on CPU: attention reused, wall time and PSNR of each mode versus `off`.

    python -m benchmarks.bench_fast_mode [--steps 50 --layers 8 --repeats 3]

A tiny t2v-5b pipeline with its transformer widened and deepened (`--layers` blocks of 4 heads x
32) so the transformer dominates, latents returned (no VAE decode), 9 frames at 48x32, CFG 6,
dynamic CFG, THUDM's DPM scheduler. Random weights: the caches' skipping decisions on random
weights say nothing of quality on the released ones (docs/speed.md has the published numbers);
this measures that the hooks skip work, what the skipped work saves on CPU, and how far the
result moves. Modes interleaved per repeat; medians; ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from cogvx.cogvideox.generate import use_variant_scheduler
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline
from cogvx.gpu import cpu_generator
from cogvx.models import get_variant
from cogvx.speed.cache import FAST_MODES, FastModeSlot, counting


def build(layers: int):
    """The tiny pipeline with a transformer large enough to dominate a CPU run."""
    from diffusers import CogVideoXTransformer3DModel

    pipe = build_tiny_pipeline("t2v-5b")
    cfg = dict(pipe.transformer.config)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg.update(num_layers=layers, num_attention_heads=4, attention_head_dim=32)
    torch.manual_seed(5)
    pipe.transformer = CogVideoXTransformer3DModel(**cfg).eval()
    use_variant_scheduler(pipe, get_variant("t2v-5b"), lambda _: None)
    return pipe


def run(pipe, slot: FastModeSlot, mode: str, steps: int) -> tuple[float, torch.Tensor, int, int]:
    slot.apply(mode, pipe, 6.0)
    t0 = time.perf_counter()
    with counting(pipe.transformer) as work, torch.inference_mode():
        latents = pipe(
            prompt="a cat on the dog in the garden", num_frames=9, height=TINY_HEIGHT,
            width=TINY_WIDTH, num_inference_steps=steps, guidance_scale=6.0,
            use_dynamic_cfg=True, generator=cpu_generator(3), output_type="latent",
        ).frames  # fmt: skip
    return time.perf_counter() - t0, latents, work.attention, work.scheduled


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of latents `a` against `b`, peak = b's range."""
    mse = float(torch.mean((a.float() - b.float()) ** 2))
    peak = float(b.max() - b.min())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pipe = build(args.layers)
    slot = FastModeSlot(pipe.transformer, log=print)
    print(f"torch threads: {torch.get_num_threads()}; {args.layers} blocks, {args.steps} steps")
    run(pipe, slot, "off", 2)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in FAST_MODES}
    out: dict[str, tuple[torch.Tensor, int, int]] = {}
    for _ in range(args.repeats):
        for mode in FAST_MODES:
            seconds, latents, computed, scheduled = run(pipe, slot, mode, args.steps)
            times[mode].append(seconds)
            out[mode] = (latents, computed, scheduled)
    ref = out["off"][0]
    base = statistics.median(times["off"])
    print("\n| mode | attention computed | reused | median s | PSNR vs off (latents, dB) |")
    print("| --- | --- | --- | --- | --- |")
    for mode in FAST_MODES:
        latents, computed, scheduled = out[mode]
        print(
            f"| {mode} | {computed} of {scheduled} | {1 - computed / scheduled:.0%} | "
            f"{statistics.median(times[mode]):.2f} | {psnr(latents, ref):.1f} |"
        )
    print("\nratios (wall time of off / mode):")
    for mode in FAST_MODES[1:]:
        print(f"  {mode}: {base / statistics.median(times[mode]):.2f}x")


if __name__ == "__main__":
    main()
