"""Ordered chunk sources: parallel HTTP ranges and read-ahead streams, in reused buffers."""

from __future__ import annotations

import contextlib
import http.client
import io
import mmap
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator

from cogvx.errors import WeightsError
from cogvx.net.http import (
    _HEADERS,
    PIECE,
    RAMP_MIN,
    RETRIES,
    RETRY_STATUSES,
    _sleep_backoff,
    _status_error,
    _Target,
    _why,
)


def _buffer(size: int) -> mmap.mmap:
    """A chunk buffer: anonymous memory, zero pages mapped on first write (no up-front memset)."""
    return mmap.mmap(-1, size)


def first_span(chunk_size: int, connections: int) -> int:
    """Size of the first range: the ramp-up's first step."""
    return max(min(RAMP_MIN, chunk_size), chunk_size // max(1, connections))


def plan_spans(total: int, chunk_size: int, connections: int) -> list[tuple[int, int]]:
    """(start, length) of each range: chunk/N, 2 chunk/N, ... chunk, then chunk-sized ranges.

    Connections share an uncapped link, so equal big first chunks would all finish late
    together and leave tar idle; the ramp hands tar its first bytes almost at once.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    while start < total:
        i = len(spans)
        size = chunk_size
        if i < connections:
            size = max(first_span(chunk_size, connections), chunk_size * (i + 1) // connections)
        length = min(size, total - start)
        spans.append((start, length))
        start += length
    return spans or [(0, 0)]


class RangeReader:
    """Download [0, total) in ranges (see `plan_spans`) over parallel connections, in order.

    Memory is (threads + 2) chunk buffers. A yielded view is valid until the next step.
    """

    def __init__(
        self,
        target: _Target,
        total: int,
        *,
        chunk_size: int,
        connections: int,
        timeout: float,
        first: tuple[http.client.HTTPConnection, http.client.HTTPResponse] | None = None,
    ) -> None:
        self.target = target
        self.total = total
        self.spans = plan_spans(total, chunk_size, connections)
        self.n = len(self.spans)
        self.threads = max(1, min(connections, self.n))
        self.timeout = timeout
        self._first = first
        self._chunk = chunk_size
        self._pool: queue.Queue[mmap.mmap] = queue.Queue()
        self._unmade = min(self.n, self.threads + 2) - 1  # buffers not allocated yet
        self._first_buf: mmap.mmap | None = _buffer(chunk_size)  # chunk 0 never waits
        self._next = 1
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: dict[int, mmap.mmap] = {}
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._conns: set[http.client.HTTPConnection] = set()

    def __iter__(self) -> Iterator[memoryview]:
        workers = [
            threading.Thread(target=self._work, args=(i == 0,), daemon=True, name=f"weights-{i}")
            for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        try:
            for idx in range(self.n):
                with self._cond:
                    while idx not in self._ready and self._error is None:
                        self._cond.wait()
                    if self._error is not None:
                        raise self._error
                    buf = self._ready.pop(idx)
                yield memoryview(buf)[: self.spans[idx][1]]
                self._pool.put(buf)
        finally:
            self._stop.set()
            with self._lock:
                conns = list(self._conns)
            for conn in conns:
                if conn.sock is not None:
                    with contextlib.suppress(OSError):
                        conn.sock.shutdown(socket.SHUT_RDWR)
            for w in workers:
                w.join(timeout=5)

    def _take_buffer(self) -> mmap.mmap | None:
        with self._lock:
            if self._unmade > 0 and self._pool.empty():
                self._unmade -= 1
                return _buffer(self._chunk)
        while not self._stop.is_set():
            try:
                return self._pool.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _work(self, takes_first: bool) -> None:
        conn: http.client.HTTPConnection | None = None
        try:
            while not self._stop.is_set():
                buf = self._first_buf if takes_first else self._take_buffer()
                if buf is None:
                    return
                resp = None
                if takes_first:
                    idx = 0
                    self._first_buf = None
                    if self._first is not None:
                        conn, resp = self._first
                        self._track(conn)
                    takes_first = False
                else:
                    with self._lock:
                        idx = self._next
                        self._next += 1
                    if idx >= self.n:
                        self._pool.put(buf)
                        return
                conn = self._fetch(idx, buf, conn, resp)
                with self._cond:
                    self._ready[idx] = buf
                    self._cond.notify_all()
        except _Stopped:
            return
        except BaseException as e:  # reported to the consumer, which raises it
            with self._cond:
                if self._error is None:
                    self._error = e
                self._cond.notify_all()
            self._stop.set()
        finally:
            if conn is not None:
                self._drop(conn)

    def _track(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conns.add(conn)

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _fetch(
        self,
        idx: int,
        buf: mmap.mmap,
        conn: http.client.HTTPConnection | None,
        resp: http.client.HTTPResponse | None,
    ) -> http.client.HTTPConnection | None:
        start, length = self.spans[idx]
        end = start + length - 1
        view = memoryview(buf)
        got = 0
        failures = 0
        while got < length:
            try:
                if resp is None:
                    if conn is None:
                        conn = self.target.connect(self.timeout)
                        self._track(conn)
                    headers = dict(_HEADERS, Range=f"bytes={start + got}-{end}")
                    conn.request("GET", self.target.request_path, headers=headers)
                    resp = conn.getresponse()
                    self._check_answer(resp, start + got)
                # a short answer is read and the rest asked again; a long one ends the connection
                size = resp.length if resp.length is not None else length - got
                if size <= 0:
                    raise ConnectionError("empty answer to a range request")
                exact = size == length - got
                stop_at = got + min(size, length - got)
                assert conn is not None  # an answer comes with its connection (see _work)
                got, readinto = self._body_reader(conn, resp, view, got, stop_at)
                while got < stop_at:
                    if self._stop.is_set():
                        raise _Stopped
                    n = readinto(view[got : min(stop_at, got + PIECE)])
                    if not n:
                        raise ConnectionError(f"connection closed after {got} of {length} bytes")
                    got += n
                resp = None
                if not exact:
                    self._drop(conn)
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if self._stop.is_set():
                    raise _Stopped from e
                resp = None
                if conn is not None:
                    self._drop(conn)
                    conn = None
                failures += 1
                if failures > RETRIES:
                    why = _why(e, self.timeout, self.target.safe)
                    raise WeightsError(
                        f"download of {self.target.safe} failed at bytes {start + got}-{end} "
                        f"after {failures} attempts: {why}"
                    ) from e
                _sleep_backoff(failures, self._stop)
        return conn

    def _body_reader(
        self,
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        view: memoryview,
        got: int,
        length: int,
    ) -> tuple[int, Callable[[memoryview], int]]:
        """How to read this answer's body: (bytes already placed at view[got:], readinto)."""
        sock = conn.sock
        if type(sock) is not socket.socket or resp.will_close or resp.chunked:
            return got, resp.readinto
        # Plain HTTP: take what http.client buffered, then read the socket itself in blocking
        # mode with MSG_WAITALL: one call per PIECE instead of one per burst of packets.
        head = resp.fp.read1(min(length - got, 1 << 16))
        view[got : got + len(head)] = head
        if sock.gettimeout() is not None:
            sock.settimeout(None)
            tv = struct.pack("ll", int(self.timeout), int(self.timeout % 1 * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        resp.close()  # the body is read from the socket: the connection may send the next request

        def readinto(piece: memoryview) -> int:
            return sock.recv_into(piece, len(piece), socket.MSG_WAITALL)

        return got + len(head), readinto

    def _check_answer(self, resp: http.client.HTTPResponse, start: int) -> None:
        if resp.status == 206:
            value = resp.getheader("Content-Range") or ""
            if value.startswith(f"bytes {start}-"):
                return
            raise WeightsError(
                f"download of {self.target.safe} failed: asked for bytes from {start}, "
                f"got Content-Range {value!r}"
            )
        if resp.status in RETRY_STATUSES:
            raise _RetryableStatus(f"HTTP {resp.status} {resp.reason}")
        if resp.status == 200:
            raise WeightsError(
                f"download of {self.target.safe} failed: the server stopped honouring Range "
                "requests (HTTP 200 to a range request)"
            )
        raise _status_error(self.target.safe, resp.status, resp.reason)


class _Stopped(Exception):
    pass


class _RetryableStatus(http.client.HTTPException):
    pass


def stream_chunks(
    readinto: Callable[[memoryview], int | None],
    *,
    chunk_size: int,
    expected: int | None,
    label: str,
    close: Callable[[], None] | None = None,
    timeout: float | None = None,
) -> Iterator[memoryview]:
    """Read a byte stream in a helper thread into a few reused buffers; iterate in order."""
    pool: queue.Queue[mmap.mmap | None] = queue.Queue()
    for _ in range(3):
        pool.put(_buffer(chunk_size))
    out: queue.Queue[tuple[mmap.mmap, int] | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def read() -> None:
        got = 0
        try:
            while not stop.is_set():
                buf = pool.get()
                if buf is None or stop.is_set():
                    return
                view = memoryview(buf)
                n = 0
                while n < chunk_size:
                    k = readinto(view[n:])
                    if not k:
                        break
                    n += k
                got += n
                if n:
                    out.put((buf, n))
                if n < chunk_size:
                    if expected is not None and got != expected:
                        raise WeightsError(
                            f"download of {label} is truncated: received {got} of {expected} bytes"
                        )
                    out.put(None)
                    return
        except BaseException as e:  # reported to the consumer, which raises it
            if isinstance(e, (OSError, http.client.HTTPException)):
                why = _why(e, timeout, label)
                e = WeightsError(f"download of {label} failed after {got} bytes: {why}")
            out.put(e)

    reader = threading.Thread(target=read, daemon=True, name="weights-stream")
    reader.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            buf, n = item
            yield memoryview(buf)[:n]
            pool.put(buf)
    finally:
        stop.set()
        pool.put(None)
        if close is not None:
            with contextlib.suppress(OSError):
                close()
        reader.join(timeout=5)


def file_chunks(
    f: io.RawIOBase | io.BufferedIOBase, *, chunk_size: int, label: str
) -> Iterator[memoryview]:
    """Chunks of a local file, read ahead in a helper thread."""
    return stream_chunks(f.readinto, chunk_size=chunk_size, expected=None, label=label)
