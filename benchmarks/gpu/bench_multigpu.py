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

The ranks die with the benchmark (daemon processes that watch it). A row that rank 0 has not
reported within --budget seconds, or a rank that fails, stops the ranks and fails the run with
the reason (the rows measured so far are printed first).
"""

from __future__ import annotations

import argparse
import queue as queues
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks.gpu.bench_speed import E2E_STEPS, SHAPES, StepClock, build, decode_seconds, denoise
from cogvx.children import exit_with_parent
from cogvx.parallel.plan import Degrees
from cogvx.parallel.workers import exit_status, stop_processes

TINY_SHAPE = (9, 32, 48)
POLL_S = 1.0  # how often the wait for a row looks at the ranks


class RowFailed(RuntimeError):
    """A setting's row did not come: a rank failed, or rank 0 did not report in time."""


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
    exit_with_parent()
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


def wait_for_row(setting: str, queue: Any, procs: list[Any], limit: float) -> dict:
    """Rank 0's row, or RowFailed: a rank exited with an error, rank 0 exited without a row, or
    `limit` seconds passed."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return dict(queue.get(timeout=POLL_S))
        except queues.Empty:
            pass
        failed = [(r, p) for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
        if failed:
            rank, proc = failed[0]
            raise RowFailed(f"{setting}: rank {rank} failed ({exit_status(proc)}); see its log")
        if procs[0].exitcode == 0:  # its row, if it sent one, is in the pipe already
            try:
                return dict(queue.get(timeout=POLL_S))
            except queues.Empty:
                raise RowFailed(f"{setting}: rank 0 exited without reporting its row") from None
        if time.monotonic() > deadline:
            alive = [str(r) for r, p in enumerate(procs) if p.is_alive()]
            raise RowFailed(
                f"{setting}: rank 0 did not report its row within {limit:g} s (--budget; ranks "
                f"{', '.join(alive)} still running, perhaps stuck in a collective)"
            )


def run_setting(d: Degrees, args: argparse.Namespace, target: Callable[..., None] = _rank) -> dict:
    """One row: start the ranks (`target`: their entry point), wait at most `args.budget`
    seconds for rank 0's numbers, stop the ranks. RowFailed when the row does not come.

    The ranks meet at a file store in a fresh folder (as the predictor's workers do): no port to
    pick, so none another process can take first, and nothing listening on the network."""
    with tempfile.TemporaryDirectory(prefix="bench-multigpu-") as folder:
        address = Path(folder, "rendezvous").as_uri()
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=target, args=(r, d, address, args, queue), daemon=True, name=f"bench-rank{r}"
            )
            for r in range(d.world)
        ]
        try:
            for p in procs:
                p.start()
            row = wait_for_row(d.describe(), queue, procs, args.budget)
            stop_processes(procs, grace=60)  # they leave after destroy_process_group
        finally:  # a failed row: stop the ranks now
            stop_processes([p for p in procs if p.pid is not None], grace=0)
    row["e2e"] = E2E_STEPS * row["step"] + row["decode"]
    return {"setting": d.describe(), "gpus": d.world, **row}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (`argv`, default sys.argv)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="t2v-5b", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting")
    parser.add_argument("--gpus", type=int, help="largest count (default: all visible)")
    parser.add_argument(
        "--budget", type=float, default=540.0,
        help="seconds for all rows; also the longest wait for one row",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", help="CPU ranks and the tiny model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    gpus = args.gpus or (torch.cuda.device_count() if not args.tiny else 2)
    if not args.tiny and gpus < 1:
        raise SystemExit("bench_multigpu: no CUDA device (use --tiny for the CPU smoke run)")
    card = "CPU (tiny model, gloo)" if args.tiny else torch.cuda.get_device_name(0)
    deadline = time.monotonic() + args.budget
    rows: list[dict] = []
    failure = ""
    for d in settings(gpus):
        if time.monotonic() > deadline:
            print(f"budget spent: {d.describe()} not run")
            break
        try:
            rows.append(run_setting(d, args))
        except RowFailed as exc:
            failure = f"bench_multigpu: {exc}"
            break
        r = rows[-1]
        print(f"{r['setting']:<36} {r['step']:8.3f} s/step  e2e {r['e2e']:8.1f} s  "
              f"peak {r['peak']:6.1f} GiB")  # fmt: skip
    if rows:
        _print_table(rows, args.model, card)
    if failure:
        raise SystemExit(failure)


def _print_table(rows: list[dict], model: str, card: str) -> None:
    base = rows[0]["step"]
    print(f"\n{model} on {card}, {E2E_STEPS} steps end to end, fast_mode off")
    print("| setting | GPUs | s/step | end-to-end s | peak GiB/card | speed-up vs 1 GPU |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting']} | {r['gpus']} | {r['step']:.3f} | {r['e2e']:.1f} | "
              f"{r['peak']:.1f} | {base / r['step']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
