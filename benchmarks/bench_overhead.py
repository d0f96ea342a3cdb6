"""A prediction through the real coglet server vs the bare diffusers call, tiny t2v-5b, on CPU.

    python -m benchmarks.bench_overhead [--frames 49 --steps 50 --repeats 5]

(From the repo root, as a module: it imports tests.support.coglet_harness, not installed.)

One run, the same tiny weights, prompt, seed and arguments on every side, interleaved (one of
each per repeat, so load drift hits all alike):

  (a) bare, main thread: the diffusers pipeline call in this process, as a script would make it;
  (b) bare, worker thread, idle pool kept: the same call on a long-lived worker thread while
      the main thread (as after setup()) holds an idle OpenMP pool. coglet runs setup() on its
      main thread and each run() on one of its tokio worker threads, so before VideoService
      released those pools (cogvx.gpu.release_openmp_pool) every prediction ran like this but
      the very first;
  (b') bare, worker thread, idle pool released: the same after release_openmp_pool() on the
      main thread: what coglet runs now;
  (c) server: POST /predictions to coglet (tools/serve.py, cog.yaml, COG_WEIGHTS = the tiny
      folder), the returned data URI decoded and written to a file. Its `predict_time` metric
      (run() inside coglet's worker) splits (c) into run() and coglet's own cost (HTTP, JSON,
      base64 of the output, the IPC to its worker process).

Per side: the median wall time and the median count of voluntary context switches per call
(futex sleeps: with libgomp's threads spinning between ops there are few; when it thinks the
CPUs oversubscribed, one or more per op). The server's count is its worker process's. The OpenMP
setting used is printed (tests pin OMP_NUM_THREADS=1; this benchmark reads the environment, by
default unset = one thread per core), and so are the core count and load before and after:
on a shared machine the load moves the figures more than anything measured here. Ratios last.
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cogvx.cogvideox.generate import VideoModel
from cogvx.dev.tiny import save_tiny_weights
from cogvx.gpu import cpu_generator, release_openmp_pool
from tests.support.coglet_harness import CogletServer, save_output

PROMPT = "a cat on the dog in the garden"


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores"


def own_vcsw() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def process_vcsw(pid: int) -> int:
    """Voluntary context switches of a process's live threads (Linux /proc)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("voluntary_ctxt"))
        except (OSError, StopIteration):
            pass  # the thread ended meanwhile
    return total


def worker_pid(server_pid: int) -> int:
    """coglet's worker: the child process of the server (it runs setup() and run())."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == server_pid:
                    return int(pid)
        except (OSError, IndexError, ValueError):
            continue
    raise RuntimeError(f"no worker process under coglet pid {server_pid}")


class Worker:
    """One long-lived thread that runs calls handed to it, as coglet's tokio worker threads do.

    After each call it frees its own OpenMP pool (as VideoService.run now does), so that the
    pool does not stay behind, idle, while the main thread runs side (a).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="bench-worker", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn = self._jobs.get()
            error = None
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                error = exc
            release_openmp_pool()  # before answering: the caller's next side runs pool-free
            self._done.put(error)

    def __call__(self, fn: Callable[[], None]) -> None:
        self._jobs.put(fn)
        error = self._done.get()
        if error is not None:
            raise error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--steps", type=int, default=50)  # the Runner's default
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    omp = os.environ.get("OMP_NUM_THREADS")
    print(f"nproc: {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})")
    print(
        f"OMP_NUM_THREADS: {'unset (the default)' if omp is None else omp}; "
        f"torch intra-op threads: {torch.get_num_threads()} (main thread)"
    )
    print(load_line("before"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COGVX_OUTPUT_DIR"] = str(Path(tmp, "out"))  # inherited by the server too
        os.environ["COGVX_WEIGHTS_CACHE"] = str(Path(tmp, "cache"))
        folder = save_tiny_weights("t2v-5b", Path(tmp, "tiny"))
        model = VideoModel.load("t2v-5b", str(folder), log=lambda _: None)
        pipe, v = model.pipe, model.variant
        pipe.set_progress_bar_config(disable=True)
        inputs = dict(
            prompt=PROMPT,
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
                    prompt=PROMPT,
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

        worker = Worker()

        def thread_pool_kept() -> None:
            torch.ones(1 << 20).sum()  # a parallel op: the main thread holds a pool, as setup()
            worker(bare)

        def thread_pool_released() -> None:
            release_openmp_pool()
            worker(bare)

        with CogletServer("cog.yaml", env={"COG_WEIGHTS": str(folder)}) as server:
            health = server.wait_ready(timeout=600)
            if health.get("status") != "READY":
                raise SystemExit(f"server not ready: {health}\n{server.logs()[-3000:]}")
            wpid = worker_pid(server.proc.pid)  # type: ignore[union-attr]
            predict_times: list[float] = []

            def server_vcsw() -> int:
                return process_vcsw(wpid)

            def through_server() -> None:
                status, body = server.predict(dict(inputs), timeout=1800)
                if status != 200 or body.get("status") != "succeeded":
                    raise SystemExit(f"prediction failed: {status} {body}")
                save_output(body["output"], Path(tmp, "server.mp4"))
                predict_times.append(body["metrics"]["predict_time"])

            sides: list[tuple[str, Callable[[], None], Callable[[], int]]] = [
                ("(a)  bare, main thread", bare, own_vcsw),
                ("(b)  bare, worker thread, idle pool kept", thread_pool_kept, own_vcsw),
                ("(b') bare, worker thread, idle pool released", thread_pool_released, own_vcsw),
                ("(c)  server: POST /predictions, mp4 written", through_server, server_vcsw),
            ]
            for _, fn, _ in sides:  # warm-up
                fn()
            predict_times.clear()
            wall: dict[str, list[float]] = {name: [] for name, _, _ in sides}
            sleeps: dict[str, list[int]] = {name: [] for name, _, _ in sides}
            for _ in range(args.repeats):
                for name, fn, vcsw in sides:
                    c0, t0 = vcsw(), time.perf_counter()
                    fn()
                    wall[name].append(time.perf_counter() - t0)
                    sleeps[name].append(vcsw() - c0)

        med = {name: statistics.median(t) for name, t in wall.items()}
        a, b, b2, c = (med[name] for name, _, _ in sides)
        run_time = statistics.median(predict_times)
        print(f"{args.frames} frames, {args.steps} steps, median of {args.repeats}:")
        for name, _, _ in sides:
            print(
                f"  {name:<46} {med[name]:7.3f} s   "
                f"{statistics.median(sleeps[name]):6.0f} context switches/call"
            )
        print(f"  server run() (coglet predict_time)             {run_time:7.3f} s")
        print(
            f"server split: coglet's own cost (HTTP, JSON, base64, worker IPC) "
            f"{1e3 * (c - run_time):.0f} ms; run() beyond the bare worker-thread call "
            f"(checks, seeding, uint8, H.264) {1e3 * (run_time - b2):.0f} ms"
        )
        print(load_line("after"))
        print(f"ratio worker thread / main thread, idle pool kept (before the fix): {b / a:.3f}x")
        print(f"ratio worker thread / main thread, idle pool released (now): {b2 / a:.3f}x")
        print(f"ratio (server / bare main-thread call): {c / a:.3f}x")


if __name__ == "__main__":
    main()
