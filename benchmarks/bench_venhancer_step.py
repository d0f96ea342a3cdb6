"""VEnhancer on the tiny model: time of one UNet+ControlNet evaluation vs its FLOP count.

    python benchmarks/bench_venhancer_step.py [--repeats 5]

For latents of growing size, prints the FLOPs of one call (torch's FlopCounterMode, the same
counter as the README's cost table), the measured median time and the achieved GFLOP/s.

The last line is the ratio (time growth / FLOP growth) from the smallest to the largest latent,
which is the same number as (GFLOP/s at the smallest) / (GFLOP/s at the largest). 1 would mean
time is proportional to FLOPs. Below 1 means small calls run at a lower rate: each call has a
fixed cost (Python, op dispatch, OpenMP hand-offs on a few hundred small ops) that does not
shrink with the latent. So it says how far the FLOP table is from predicting the *relative*
cost of tiny CPU calls, not a property of the full-size model on a GPU (where the fixed part
is negligible). To separate the two, the line before it fits time = fixed + FLOPs / rate over
the sizes. The ratio moves with load and thread count, so the load before and after, the core
count and the OpenMP setting are printed with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cogvx.dev.venhancer import TINY_UNET_CONFIG, tiny_venhancer
from cogvx.venhancer.cost import flops_per_frame

SIZES = [(10, 16), (18, 32), (34, 64)]  # latent (h, w): heights 8k+2 as the UNet needs
FRAMES = 8


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def step_seconds(model, h: int, w: int, repeats: int) -> float:
    cfg = TINY_UNET_CONFIG
    x = torch.randn(1, cfg["in_channels"], FRAMES, h, w)
    y = torch.randn(1, 77, cfg["cross_attention_dim"])
    t = torch.tensor([500])
    mask = torch.zeros(1, FRAMES, dtype=torch.long)
    mask[:, ::4] = 1
    times = []
    with torch.inference_mode():
        model(x, t, y, x, t, torch.tensor([8]), mask)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, t, y, x, t, torch.tensor([8]), mask)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    omp = os.environ.get("OMP_NUM_THREADS")
    print(
        f"OMP_NUM_THREADS: {'unset' if omp is None else omp}; "
        f"torch threads: {torch.get_num_threads()}"
    )
    print(load_line("before"), flush=True)
    model = tiny_venhancer().model
    rows = []
    for h, w in SIZES:
        flops = flops_per_frame(h, w, FRAMES, TINY_UNET_CONFIG) * FRAMES
        sec = step_seconds(model, h, w, args.repeats)
        rows.append((h, w, flops, sec))
        print(f"latent {FRAMES}x{h}x{w}: {flops / 1e9:.3f} GFLOP, {sec * 1e3:.1f} ms, "
              f"{flops / sec / 1e9:.1f} GFLOP/s")  # fmt: skip
    fl = [r[2] for r in rows]
    se = [r[3] for r in rows]
    slope, fixed = statistics.linear_regression(fl, se)
    print(
        f"fit over the sizes: time = {fixed * 1e3:.0f} ms fixed + FLOPs at "
        f"{1 / slope / 1e9:.1f} GFLOP/s"
    )
    print(load_line("after"))
    (_, _, f0, s0), (_, _, f1, s1) = rows[0], rows[-1]
    print(f"ratio (time growth / FLOP growth, smallest -> largest): {(s1 / s0) / (f1 / f0):.2f}")


if __name__ == "__main__":
    main()
