"""The predictor's worker processes: one per GPU, started, fed, cancelled and stopped by it.

`ParallelVideoModel` stands where `VideoModel` stands in the video service (variant,
count_tokens, generate). Each request goes to every rank; rank 0 decodes and returns the frames
and relays its log lines (the other ranks stop at the latents). A request's LoRA is downloaded
once, by the predictor, into the cache every rank reads. A cancel or an error reaches every rank
at the same step (they agree once per step); a rank that dies or stops answering restarts the
whole pool, and the request fails with the reason (the first failure, and how a dead rank
exited); a rank found dead between requests restarts the pool before the next request runs.
Rank 0 reports each denoising step; a request during which rank 0 sends nothing for
COGVX_PARALLEL_STALL_S seconds (a rank stuck in a collective) fails and restarts the pool too.
Messages travel over the predictor's own pipes (never a user source), and every request carries
an id: its replies, and its cancel, never reach another request. The ranks meet through a file in
a private folder (no listening socket for the rendezvous).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NoReturn

from cogvx import settings
from cogvx.children import PARENT_GONE_EXIT, exit_with_parent
from cogvx.cogvideox.generate import Request, Result, VideoModel, resolve_weights
from cogvx.errors import InputError, SetupError
from cogvx.gpu import resolve_seed
from cogvx.log import log as log_line
from cogvx.lora.cache import LoraCache
from cogvx.models import Variant, get_variant
from cogvx.parallel.plan import Degrees, request_fast_mode

READY_TIMEOUT_S = 3600.0  # every rank loads the pipeline (and warms up on a GPU)
STRAGGLER_S = 120.0  # after one rank fails or cancels, how long the others get to answer
CLOSE_S = 20.0  # how long every rank together gets to leave on "stop" before it is terminated
# (they leave in ~2 s here; with 10 s, one CI run saw a rank not leave cleanly in time)


class Canceled(Exception):
    """Every rank stops at the same step."""


class WorkerError(RuntimeError):
    """A rank failed outside the request's inputs (the pool restarts when it hangs)."""


def worker_main(
    rank: int,
    world: int,
    address: str,
    model: str,
    folder: str,
    degrees: Degrees,
    device_type: str,
    conn: Connection,
    cancel: Any,
    rung: int | None,
) -> None:
    """One rank: join the group, load the pipeline, split it, warm up at fallback step `rung`
    (None: no warm-up), then serve requests until stop.

    Replies are (kind, request id, ...): ("ready", 0, pid), ("done", id, result),
    ("canceled", id), ("error", id, what, message[, more]); log lines are ("log", line), and
    rank 0's heartbeat after each denoising step is ("step", id) (not a reply).
    `cancel` holds the id of the request to stop (every rank agrees at the same step)."""
    exit_with_parent()  # not PR_SET_PDEATHSIG: it fires when the starting *thread* exits
    from cogvx.parallel.engine import agree, check_ring_backend, enable_parallel, init_group
    from cogvx.speed.apply import WarmUpFailed

    running = [0]  # the id of the request in progress

    def log(line: str) -> None:
        if rank == 0:
            conn.send(("log", line))

    try:
        init_group(rank, world, address, device_type)
        vm = VideoModel.load(model, folder, log=log, warm_up=False)
        vm.decode = rank == 0  # only rank 0's frames are returned
        enable_parallel(vm.pipe.transformer, degrees, device_type)
        check_ring_backend(vm.pipe.transformer, degrees)
        if rung is not None:  # every rank together: the compiled graphs see the split
            vm.warm_up(rung)
            check_ring_backend(vm.pipe.transformer, degrees)  # a fallback may reach native

        def after_step() -> None:
            if rank == 0:
                conn.send(("step", running[0]))  # the predictor's stall watch
            if agree(cancel.value == running[0]):
                raise Canceled

        vm.step_callback = after_step
        conn.send(("ready", 0, os.getpid()))
    except WarmUpFailed as exc:  # the predictor restarts every rank at the next step, or gives up
        conn.send(("error", 0, "warm-up", str(exc), exc.more))
        return
    except BaseException as exc:  # noqa: BLE001 (reported to the predictor, which fails setup)
        conn.send(("error", 0, "setup", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the predictor is gone
            os._exit(PARENT_GONE_EXIT)
        if message[0] == "stop":
            break
        _, rid, req = message
        running[0] = rid
        try:
            req.fast_mode, note = request_fast_mode(req.fast_mode, degrees)
            if note:
                log(note)
            result = vm.generate(req)
            conn.send(("done", rid, result if rank == 0 else None))
        except Canceled:
            conn.send(("canceled", rid))
        except InputError as exc:  # the project's own input checks: the pool keeps serving
            conn.send(("error", rid, "input", str(exc)))
        except Exception as exc:  # noqa: BLE001 (the predictor raises it for the request)
            conn.send(("error", rid, "run", f"{type(exc).__name__}: {exc}"))
    import torch.distributed as dist

    dist.destroy_process_group()


def _read(rank: int, conn: Connection, inbox: queue.Queue) -> None:
    """Move one rank's messages into the inbox until its pipe closes (then an "exit" error,
    which belongs to whatever request is waiting)."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            inbox.put((rank, ("error", None, "exit", "worker process exited")))
            return
        inbox.put((rank, message))


def stop_processes(procs: list[Any], grace: float = CLOSE_S) -> None:
    """Wait up to `grace` seconds in all for `procs` to exit (one deadline, not one per process),
    then terminate the ones left, and kill those still alive 5 s later."""
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [p for p in procs if p.is_alive()]
    for proc in left:
        proc.terminate()
    deadline = time.monotonic() + 5
    for proc in left:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def exit_status(proc: Any) -> str:
    """How a rank's process ended: "exit code 1", "killed by SIGKILL", or "still running"."""
    proc.join(timeout=5)  # its pipe closes a moment before the process is reaped
    code = proc.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ParallelVideoModel:
    """A CogVideoX pipeline split over `degrees.world` worker processes."""

    def __init__(
        self,
        model: str,
        folder: Path,
        degrees: Degrees,
        device_type: str,
        log: Any,
        warm_up: bool | None = None,
        target: Callable[..., None] = worker_main,
    ):
        self.model, self.folder, self.degrees = model, folder, degrees
        self.device_type, self.log, self.target = device_type, log, target
        self.warm_up = device_type == "cuda" if warm_up is None else warm_up
        self.rung = 0  # the warm-up fallback step every rank runs (raised when one rank fails)
        self.variant: Variant = get_variant(model).with_folder_overrides(folder)
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self._ctx = mp.get_context("spawn")  # CUDA cannot be forked
        self._cancel = self._ctx.Value("q", 0)  # the id of the request every rank stops
        self._rid = 0  # the last request's id (0: setup)
        self._rendezvous: str | None = None  # the private folder the ranks meet in
        self._tokenizer: Any = None
        self._loras: LoraCache | None = None
        self._inbox: queue.Queue = queue.Queue()
        self.stall_s = settings.parallel_stall_seconds()  # a bad value fails setup, not a request

    @classmethod
    def start(
        cls,
        model: str,
        weights: str | None,
        degrees: Degrees,
        device_type: str = "cuda",
        log: Callable[[str], None] = log_line,
        **options: Any,
    ) -> ParallelVideoModel:
        """Fetch the weights once, start one worker per rank and wait until all are ready.

        `options`: `warm_up` (default: on CUDA) and `target`, the ranks' entry point."""
        folder = resolve_weights(get_variant(model), weights, log)
        pool = cls(model, folder, degrees, device_type, log, **options)
        pool._spawn()
        return pool

    def _spawn(self) -> None:
        """Start the ranks. A warm-up that fails on any rank restarts all of them one fallback
        step further (without compile, then on native attention), so every rank runs the same
        plan: ranks on different plans would stall each other's collectives."""
        while True:
            replies = self._start_ranks()
            world = self.degrees.world
            if len(replies) == world and all(m[0] == "ready" for m in replies.values()):
                pids = ", ".join(str(replies[r][2]) for r in range(world))
                self.log(f"parallel: {world} workers ready (pids {pids})")
                return
            errors = [(r, m) for r, m in replies.items() if m[0] == "error"]
            failed = [f"rank {r}: {self._error_text(r, m)}" for r, m in errors]
            self.close()
            warm = [(r, m) for r, m in errors if m[2] == "warm-up"]
            if warm and len(warm) == len(errors) and all(m[4] for _, m in warm):
                rank, message = warm[0]  # the first to report: the others fail in its wake
                self.rung += 1
                self.log(
                    f"parallel: warm-up failed on rank {rank} ({message[3]}); "
                    "every rank starts again one fallback step further"
                )
                continue
            missing = [str(r) for r in range(world) if r not in replies]
            why = "; ".join(failed) or f"ranks {', '.join(missing)} did not start"
            raise SetupError(f"parallel setup failed: {why}")

    def _start_ranks(self) -> dict[int, tuple]:
        """Start one process per rank; their first replies (ready or error), in arrival order."""
        self._rendezvous = tempfile.mkdtemp(prefix="cogvx-ranks-")  # mode 0700: ours alone
        address = Path(self._rendezvous, "rendezvous").as_uri()
        world = self.degrees.world
        self.log(
            f"parallel: starting {world} workers ({self.degrees.describe()}) on {self.device_type}"
        )
        for rank in range(world):
            parent, child = self._ctx.Pipe()
            args = (rank, world, address, self.model, str(self.folder), self.degrees)
            rung = self.rung if self.warm_up else None
            proc = self._ctx.Process(
                target=self.target,
                args=(*args, self.device_type, child, self._cancel, rung),
                daemon=True,
                name=f"cogvx-rank{rank}",
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        self._inbox = queue.Queue()
        for rank, conn in enumerate(self.conns):
            reader = threading.Thread(
                target=_read, args=(rank, conn, self._inbox), daemon=True, name=f"cogvx-read{rank}"
            )
            reader.start()
        return self._collect(0, READY_TIMEOUT_S)

    def _collect(self, rid: int, timeout: float, stall: float | None = None) -> dict[int, tuple]:
        """Wait for one final reply per rank to request `rid` (0: setup), in arrival order; log
        lines are relayed on the way, heartbeats and replies of earlier requests dropped. With
        `stall`: WorkerError (the pool stopped) once rank 0 has sent nothing for `rid` (a log
        line, a heartbeat, its reply) for that many seconds while replies are missing (after an
        error reply the stragglers' own limit applies instead).

        Pipes are read by one thread per rank, so a cancel raised in this thread (coglet's, at
        any bytecode) interrupts a queue wait, never a half-read message."""
        replies: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout
        heard = time.monotonic()  # rank 0's last word on this request
        while len(replies) < len(self.conns):
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                break
            failed = any(m[0] == "error" for m in replies.values())
            if stall is not None and now - heard >= stall and not failed:
                self._stalled(rid, stall, replies)
            try:
                rank, message = self._inbox.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if rank == 0 and (message[0] == "log" or message[1] == rid):
                heard = time.monotonic()
            if message[0] == "log":
                self.log(message[1])
            elif message[0] == "step":
                pass  # a heartbeat, of this request or an earlier one: never a reply
            elif message[1] in (None, rid) and rank not in replies:
                replies[rank] = message
            if any(m[0] == "error" for m in replies.values()):
                deadline = min(deadline, time.monotonic() + STRAGGLER_S)
        return replies

    def _stalled(self, rid: int, stall: float, replies: dict[int, tuple]) -> NoReturn:
        """Stop the pool and raise WorkerError: request `rid` stalled (no word from rank 0)."""
        silent = ", ".join(str(r) for r in range(len(self.conns)) if r not in replies)
        self.close()
        self.log("parallel: workers stopped; the next request starts them again")
        raise WorkerError(
            f"the workers stalled: rank 0 sent nothing for {stall:g} s while request {rid} ran "
            f"(COGVX_PARALLEL_STALL_S={stall:g}; no reply from ranks {silent}); a rank may be "
            "stuck in a collective. The workers were stopped and the next request starts them "
            "again"
        )

    def count_tokens(self, text: str) -> int:
        """T5 tokens of `text` including the end-of-sequence token (the workers' tokenizer)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder / "tokenizer")
        return len(self._tokenizer(text, truncation=False).input_ids)

    def _fetch_lora(self, req: Request) -> Request:
        """Download the request's LoRA here, once, so every rank finds it in the shared cache
        (N ranks would fetch it N times, and list a Hub repo N times); the ranks get the file's
        own URL. A bad source fails here, before any rank works."""
        if not req.lora_url or not req.lora_url.strip():
            return req
        if self._loras is None:
            self._loras = LoraCache(log=self.log)
        url = self._loras.resolve(req.lora_url)
        self._loras.fetch(url)
        return replace(req, lora_url=url)

    @property
    def cancel_requested(self) -> bool:
        """Whether the last request was told to stop (a cancel arrived while it ran)."""
        return self._rid > 0 and self._cancel.value == self._rid

    def _restart_dead_ranks(self) -> None:
        """Start the pool again when it was stopped, or when a rank died between requests (its
        group is unusable: the survivors would wait for it in every collective)."""
        dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
        if dead:
            why = "; ".join(f"rank {r}: {exit_status(self.procs[r])}" for r in dead)
            self.log(f"parallel: a worker died between requests ({why}); restarting every rank")
            self.close()
        if not self.procs:
            self._spawn()

    def _send_all(self, message: tuple) -> None:
        """Send `message` to every rank from a helper thread, so a cancel raised in this thread
        cannot stop between two ranks' sends (ranks left on different requests would pair up in
        each other's collectives). A rank that cannot be reached stops the pool: WorkerError."""
        conns, failed = list(self.conns), []

        def send() -> None:
            for rank, conn in enumerate(conns):
                try:
                    conn.send(message)
                except BaseException as exc:  # noqa: BLE001 (a broken pipe: reported below)
                    failed.append((rank, exc))
                    return

        sender = threading.Thread(target=send, daemon=True, name="cogvx-send")
        sender.start()
        while sender.is_alive():  # a cancel may end this wait; the sender finishes regardless
            sender.join(0.1)
        if failed:
            rank, exc = failed[0]
            status = exit_status(self.procs[rank])
            self.close()
            raise WorkerError(
                f"rank {rank} could not be reached ({type(exc).__name__}; {status}); "
                "the workers were stopped and the next request starts them again"
            )

    def generate(self, req: Request) -> Result:
        """Run `req` on every rank; rank 0's frames come back."""
        self._restart_dead_ranks()
        req = self._fetch_lora(req)
        # a blank seed is drawn once here: each rank drawing its own would mix different noises
        req = replace(req, seed=resolve_seed(req.seed, self.log))
        self._rid += 1
        rid = self._rid
        try:
            self._send_all(("run", rid, req))
            replies = self._collect(rid, float("inf"), self.stall_s)
        except WorkerError:
            raise
        except BaseException:  # a cancel from the server arrives here: stop every rank
            self._cancel.value = rid  # only this request's id: a later request never sees it
            replies = self._collect(rid, STRAGGLER_S)
            if len(replies) < len(self.conns):
                self.close()
            raise
        return self._result(replies)

    def _error_text(self, rank: int, message: tuple) -> str:
        """A rank's error reply as text; a dead rank's says how its process ended."""
        if message[2] == "exit" and rank < len(self.procs):
            return f"{message[3]} ({exit_status(self.procs[rank])})"
        return str(message[3])

    def _result(self, replies: dict[int, tuple]) -> Result:
        errors = [(r, m) for r, m in replies.items() if m[0] == "error"]  # in arrival order
        broken = len(replies) < len(self.conns) or any(m[2] != "input" for _, m in errors)
        texts = [(r, m[2], self._error_text(r, m)) for r, m in errors]
        silent = [r for r in range(len(self.conns)) if r not in replies]
        if broken:  # a rank died, hangs or failed mid-run: its group is unusable, start anew
            self.close()
            self.log("parallel: workers stopped; the next request starts them again")
        if texts:
            rank, kind, text = texts[0]  # the first failure: the others follow in its wake
            if kind == "input":
                raise InputError(text)
            dead = [f"rank {r}: {t}" for r, k, t in texts[1:] if k == "exit"]
            also = f" (also {'; '.join(dead)})" if dead else ""
            raise WorkerError(f"rank {rank}: {text}{also}")
        if broken:
            raise WorkerError(f"workers stopped answering (no reply from rank {silent[0]})")
        if any(m[0] == "canceled" for m in replies.values()):
            raise Canceled("canceled")
        return replies[0][2]

    def close(self) -> None:
        """Stop every worker (ask; terminate those still running after CLOSE_S in all) and
        remove their rendezvous folder."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):
                pass
        stop_processes(self.procs, CLOSE_S)
        for conn in self.conns:
            conn.close()
        self.procs, self.conns = [], []
        if self._rendezvous is not None:
            shutil.rmtree(self._rendezvous, ignore_errors=True)
            self._rendezvous = None
