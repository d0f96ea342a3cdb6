"""Stream checked chunks into GNU tar, hashing members on the way."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cogvx import settings
from cogvx.errors import WeightsError
from cogvx.weights.tarcheck import _BLOCK, TarChecker, describe_head, looks_like_tar

Log = Callable[[str], None]


class _Hasher:
    """One thread applying sha256 updates in order (hashlib drops the GIL on big buffers)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[list, threading.Event] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True, name="weights-sha256")
        self._thread.start()

    def submit(self, jobs: list[tuple[Any, memoryview]]) -> threading.Event | None:
        if not jobs:
            return None
        done = threading.Event()
        self._q.put((jobs, done))
        return done

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            jobs, done = item
            for h, view in jobs:
                h.update(view)
            done.set()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()


class Progress:
    """Log progress every ~5 s or 10 %, and a rate."""

    def __init__(self, total: int | None, log: Log, every_s: float = 5.0) -> None:
        self.total = total
        self.log = log
        self.every_s = every_s
        self.done = 0
        self.t0 = time.monotonic()
        self._last_t = self.t0
        self._last_tenth = 0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        tenth = self.done * 10 // self.total if self.total else 0
        if now - self._last_t >= self.every_s or tenth > self._last_tenth:
            self._last_t, self._last_tenth = now, tenth
            rate = self.done / max(now - self.t0, 1e-9) / 1e6
            if self.total:
                pct = 100 * self.done / self.total
                size = f"{self.done / 1e6:.0f}/{self.total / 1e6:.0f} MB ({pct:.0f}%)"
            else:
                size = f"{self.done / 1e6:.0f} MB"
            self.log(f"weights: {size}, {rate:.0f} MB/s")


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _drain(stream: BinaryIO, tail: collections.deque) -> None:
    for line in stream:
        tail.append(line.decode("utf-8", "replace").rstrip())


def extract_stream(
    chunks: Iterable[memoryview],
    dest: Path,
    *,
    label: str,
    total: int | None,
    log: Log,
    guard: Callable[[TarChecker], None] | None = None,
) -> TarChecker:
    """Check each chunk's tar headers, then hand it to `tar -x -f -` in order; hash beside it.

    `guard(checker)` runs after each chunk's headers are read and before tar gets the chunk (a
    free-space check raises there). tar keeps no owner and applies the umask to modes; the
    installer's tree scan then drops what tarfile's `data` filter would (setuid, group/other
    write). `dest` is created private (0700) until then.
    """
    it = iter(chunks)
    proc: subprocess.Popen | None = None
    hasher: _Hasher | None = None
    try:
        first = next(it, None)
        if first is None or not looks_like_tar(first[:_BLOCK]):
            head = first if first is not None else b""
            raise WeightsError(f"{label} is not a tar archive ({describe_head(head)})")
        checker = TarChecker(label)
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 1 MiB records (-b 2048, -B: accept short pipe reads) halve tar's CPU vs 10 KiB ones
        cmd = ["tar", "-x", "-f", "-", "-b", "2048", "-B", "-C", str(dest)]
        cmd += ["--no-same-owner", "--no-same-permissions"]  # tar's defaults for non-root users
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=settings.tar_environment(),  # no TAR_OPTIONS & co: only the options above
            )
        except FileNotFoundError as e:
            raise WeightsError(f"cannot extract {label}: GNU tar is not on PATH") from e
        assert proc.stdin is not None and proc.stderr is not None
        tail: collections.deque[str] = collections.deque(maxlen=20)
        drainer = threading.Thread(target=_drain, args=(proc.stderr, tail), daemon=True)
        drainer.start()
        fd = proc.stdin.fileno()
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        hasher = _Hasher()
        progress = Progress(total, log)
        tar_open = True
        for view in _chain(first, it):
            jobs = checker.feed(view)
            done = hasher.submit(jobs)
            if guard is not None:
                guard(checker)
            if tar_open:
                try:
                    _write_all(fd, view)
                except BrokenPipeError:
                    tar_open = False
            if done is not None:
                done.wait()
            progress.add(len(view))
            if not tar_open and not checker.ended:
                break
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        rc = proc.wait()
        drainer.join(timeout=5)
        error = WeightsError(f"tar failed extracting {label} (exit {rc}): {'; '.join(tail)}")
        if rc != 0 and not tar_open:
            raise error
        checker.finish()
        if rc != 0:
            raise error
        return checker
    finally:
        if hasher is not None:
            hasher.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _chain(first: memoryview, rest: Iterator[memoryview]) -> Iterator[memoryview]:
    yield first
    yield from rest
