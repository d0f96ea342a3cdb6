"""Multi-GPU speed of CogVideoX: 1, 2, 4, 8 GPUs, full size, random weights (no download).

    python -m benchmarks.gpu.bench_multigpu [--model t2v-5b] [--steps 6] [--budget 540]
    python -m benchmarks.gpu.bench_multigpu --tiny --gpus 2   # CPU smoke run (gloo), tests

Each setting starts one process per GPU, builds the pipeline from the released configs with
random bf16 weights on its card (`benchmarks.gpu.bench_speed.build`), splits it with the
project's engine (`cogvx.parallel.engine`: diffusers' context parallelism with the CogVideoX plan,
and the CFG split) and times denoising steps from fixed random prompt embeddings: seconds per
step (median after a warm-up step), estimated end-to-end seconds for 50 steps (steps x s/step +
rank 0's VAE decode), peak GPU memory per card, and the speed-up over 1 GPU. fast_mode off (the
reference computation). Settings for N GPUs: Ulysses N, and CFG 2 x Ulysses N/2.
Pictures are noise: this measures time, not quality. Ratios last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks.gpu.bench_speed import E2E_STEPS, SHAPES, StepClock, build, decode_seconds, denoise
from cogvx.children import free_port
from cogvx.parallel.plan import Degrees

TINY_SHAPE = (9, 32, 48)


def settings(gpus: int) -> list[Degrees]:
    """Ulysses over every count up to `gpus` in powers of two, plus CFG 2 x Ulysses."""
    out = [Degrees()]
    n = 2
    while n <= gpus:
        out.append(Degrees(ulysses=n))
        out.append(Degrees(ulysses=n // 2, cfg=2))
        n *= 2
    return out


def _rank(rank: int, d: Degrees, address: str, args: argparse.Namespace, queue: Any) -> None:
    from cogvx.parallel.engine import enable_parallel, init_group

    cuda = not args.tiny
    device = f"cuda:{rank}" if cuda else "cpu"
    if d.world > 1:
        init_group(rank, d.world, address, "cuda" if cuda else "cpu")
    elif cuda:
        torch.cuda.set_device(0)
    pipe = build(args.model, device, args.tiny)
    if args.tiny:
        pipe.to("cpu")
    if d.world > 1:
        enable_parallel(pipe.transformer, d, "cuda" if cuda else "cpu")
    shape = TINY_SHAPE if args.tiny else SHAPES[args.model]
    clock = StepClock(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    latents = denoise(pipe, shape, args.steps + 1, clock)  # step 1 warms up
    per_step = statistics.median(clock.times[1:])
    decode = decode_seconds(pipe, latents, cuda) if rank == 0 else 0.0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    if rank == 0:
        queue.put({"step": per_step, "decode": decode, "peak": peak})
    if d.world > 1:
        torch.distributed.destroy_process_group()


def run_setting(d: Degrees, args: argparse.Namespace) -> dict:
    """One row: start the ranks, wait, return rank 0's numbers."""
    address = f"tcp://127.0.0.1:{free_port()}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, d, address, args, queue)) for r in range(d.world)]
    for p in procs:
        p.start()
    row = queue.get(timeout=args.budget)
    for p in procs:
        p.join(timeout=60)
    row["e2e"] = E2E_STEPS * row["step"] + row["decode"]
    return {"setting": d.describe(), "gpus": d.world, **row}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t2v-5b", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    parser.add_argument("--gpus", type=int, help="largest count (default: all visible)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all rows")
    parser.add_argument("--tiny", action="store_true", help="CPU ranks and the tiny model")
    args = parser.parse_args(argv)
    gpus = args.gpus or (torch.cuda.device_count() if not args.tiny else 2)
    if not args.tiny and gpus < 1:
        raise SystemExit("bench_multigpu: no CUDA device (use --tiny for the CPU smoke run)")
    card = "CPU (tiny model, gloo)" if args.tiny else torch.cuda.get_device_name(0)
    deadline = time.monotonic() + args.budget
    rows = []
    for d in settings(gpus):
        if time.monotonic() > deadline:
            print(f"budget spent: {d.describe()} not run")
            break
        rows.append(run_setting(d, args))
        r = rows[-1]
        print(f"{r['setting']:<36} {r['step']:8.3f} s/step  e2e {r['e2e']:8.1f} s  "
              f"peak {r['peak']:6.1f} GiB")  # fmt: skip
    base = rows[0]["step"]
    print(f"\n{args.model} on {card}, {E2E_STEPS} steps end to end, fast_mode off")
    print("| setting | GPUs | s/step | end-to-end s | peak GiB/card | speed-up vs 1 GPU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting']} | {r['gpus']} | {r['step']:.3f} | {r['e2e']:.1f} | "
              f"{r['peak']:.1f} | {base / r['step']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
