"""Internals of the weight fetcher: HTTP ranges, tar header checks, streaming into GNU tar."""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import mmap
import os
import queue
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

from cogvx.urls import UrlError, UrlPolicy, safe_url, split_url

MANIFEST_NAME = "cogvx-manifest.json"
MARKER_NAME = ".cogvx-installed.json"

RETRIES = 5  # attempts per chunk after the first one
BACKOFF_S = 0.25  # first retry delay; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
MAX_REDIRECTS = 10
PIECE = 1 << 20  # socket reads per call: a dropped connection loses at most this much
RAMP_MIN = 64 << 10  # smallest chunk of the ramp-up
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_META_LIMIT = 1 << 20  # GNU long names and pax headers
_MANIFEST_LIMIT = 256 << 20

Log = Callable[[str], None]


class WeightsError(RuntimeError):
    """Weights could not be fetched, verified or installed; the message names the source."""


# --- URLs -----------------------------------------------------------------------------------


def is_url(source: str) -> bool:
    """True for http(s) URLs."""
    return source.startswith(("http://", "https://"))


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to checked addresses (tried in order), not to a second DNS answer."""

    addresses: tuple[str, ...] = ()

    def connect(self) -> None:
        if not self.addresses:
            return super().connect()
        error: OSError | None = None
        for address in self.addresses:
            try:
                self.sock = socket.create_connection((address, self.port), self.timeout)
                break
            except OSError as e:
                error = e
        else:
            assert error is not None
            raise error
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection, _PinnedHTTP):
    """TLS over `_PinnedHTTP`: certificate and SNI still checked against the URL's host name."""


@dataclass(frozen=True)
class _Target:
    url: str
    addresses: tuple[str, ...] = ()  # checked addresses to connect to; () = resolve the host

    @property
    def safe(self) -> str:
        return safe_url(self.url)

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        cls = _PinnedHTTPS if parts.scheme.lower() == "https" else _PinnedHTTP
        conn = cls(parts.hostname or "", parts.port, timeout=timeout)
        conn.addresses = self.addresses
        return conn

    @property
    def request_path(self) -> str:
        parts = urlsplit(self.url)
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path


_HEADERS = {"User-Agent": "cogvx-weights/1", "Accept-Encoding": "identity"}


def _status_error(safe: str, status: int, reason: str) -> WeightsError:
    if status in (404, 410):
        what = "not found"
    elif status in (401, 403):
        what = "forbidden (check the URL and its token or signature)"
    elif status == 416:
        what = "the file is empty"
    else:
        what = "unexpected answer"
    return WeightsError(f"could not download weights from {safe}: {what} (HTTP {status} {reason})")


def _target(url: str, policy: UrlPolicy | None, name: str) -> _Target:
    """A hop's target: http(s) only; with a policy, its host's addresses checked and pinned."""
    split = split_url(url, policy.name if policy else name)
    return _Target(url, policy.addresses(split) if policy else ())


def _why(e: BaseException, timeout: float | None, safe: str) -> str:
    """An I/O error in words; a read timeout (EAGAIN under SO_RCVTIMEO) is a stall."""
    if isinstance(e, TimeoutError) or getattr(e, "errno", None) in (errno.EAGAIN, errno.ETIMEDOUT):
        return f"no data for {timeout:g} s from {safe}" if timeout else f"no data from {safe}"
    return str(e) or type(e).__name__


def _sleep_backoff(attempt: int, stop: threading.Event | None = None) -> None:
    delay = min(BACKOFF_S * (2 ** (attempt - 1)), BACKOFF_MAX_S)
    if stop is None:
        time.sleep(delay)
    else:
        stop.wait(delay)


def open_first(
    url: str, first_size: int, timeout: float, log: Log, policy: UrlPolicy | None = None
) -> tuple[_Target, http.client.HTTPConnection, http.client.HTTPResponse]:
    """Ask for the first range, following redirects; return the answer once it is 200 or 206.

    Every hop must be an http(s) URL (a redirect elsewhere fails at once). With a `policy`
    (user URLs), every hop's host is resolved and checked before connecting, and the connection
    goes to the checked addresses; without one (operator URLs) hosts are not restricted.
    """
    origin = safe_url(url)
    try:
        target = _target(url, policy, "weights URL")
    except UrlError as e:
        raise WeightsError(str(e)) from None
    redirects = 0
    failures = 0
    while True:
        conn = target.connect(timeout)
        try:
            headers = dict(_HEADERS, Range=f"bytes=0-{first_size - 1}")
            conn.request("GET", target.request_path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            failures += 1
            if failures > RETRIES or isinstance(e, ssl.SSLCertVerificationError):
                raise WeightsError(
                    f"could not connect to {target.safe}: {_why(e, timeout, target.safe)}"
                ) from e
            _sleep_backoff(failures)
            continue
        status = resp.status
        if status in (200, 206):
            return target, conn, resp
        location = resp.getheader("Location")
        with contextlib.suppress(OSError, http.client.HTTPException):
            resp.read(1 << 16)
        conn.close()
        if status in (301, 302, 303, 307, 308) and location:
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise WeightsError(
                    f"could not download weights from {target.safe}: too many redirects"
                )
            try:
                target = _target(urljoin(target.url, location), policy, "redirect to")
            except UrlError as e:
                raise WeightsError(f"could not download {origin}: {e}") from None
            log(f"{policy.name if policy else 'weights'}: redirected to {target.safe}")
            continue
        if status in RETRY_STATUSES:
            failures += 1
            if failures <= RETRIES:
                _sleep_backoff(failures)
                continue
        via = f" (redirected to {target.safe})" if redirects else ""
        raise _status_error(origin + via, status, resp.reason)


def content_range_total(resp: http.client.HTTPResponse, safe: str) -> int:
    """Total size from a 206 answer's Content-Range header."""
    value = resp.getheader("Content-Range") or ""
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        if unit != "bytes" or int(span.split("-", 1)[0]) != 0:
            raise ValueError(value)
        return int(total)
    except ValueError as e:
        raise WeightsError(
            f"could not download weights from {safe}: bad Content-Range {value!r} "
            "(the server must report the total size)"
        ) from e


# --- sources of ordered chunks ---------------------------------------------------------------


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
    spans = []
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


def file_chunks(f: BinaryIO, *, chunk_size: int, label: str) -> Iterator[memoryview]:
    """Chunks of a local file, read ahead in a helper thread."""
    return stream_chunks(f.readinto, chunk_size=chunk_size, expected=None, label=label)


# --- tar headers ------------------------------------------------------------------------------


def looks_like_tar(head: bytes | memoryview) -> bool:
    """True when the first 512 bytes carry the ustar magic (POSIX or GNU)."""
    return len(head) >= _BLOCK and bytes(head[257:262]) == b"ustar"


def describe_head(head: bytes | memoryview) -> str:
    """What a download looks like, in words; response bytes are never quoted in messages."""
    head = bytes(head[:64])
    if not head:
        return "it is empty"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed (send an uncompressed .tar)"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip file"
    text = head.lstrip().lower()
    if text.startswith(b"<"):
        return "it looks like an HTML or XML page (a login or error page?)"
    if text.startswith((b"{", b"[")):
        return "it looks like JSON (an error answer?)"
    return "its first bytes are not a tar header"


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        if field[0] == 0xFF:
            raise ValueError("negative number")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    records = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError("bad pax record length")
        key, value = data[space + 1 : pos + length - 1].split(b"=", 1)
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarChecker:
    """Follow a tar stream header by header: refuse unsafe members, measure and hash files.

    Files are hashed only when the first member is the manifest. Hashing happens outside
    (see `feed`'s return value), so it can run beside the tar process.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.offset = 0
        self.ended = False
        self.manifest: dict[str, Any] | None = None
        self.files: dict[str, tuple[int, Any]] = {}
        self.links: set[str] = set()
        self._hash: bool | None = None
        self._members = 0
        self._head = bytearray()
        self._left = 0
        self._pad = 0
        self._sink: Any = None
        self._kind = ""
        self._member = ""
        self._pending: dict[str, Any] = {}

    def feed(self, data: memoryview) -> list[tuple[Any, memoryview]]:
        """Check the next bytes; return (sha256 object, bytes) pairs still to be hashed."""
        jobs: list[tuple[Any, memoryview]] = []
        pos, n = 0, len(data)
        while pos < n and not self.ended:
            if self._left:
                take = min(self._left, n - pos)
                piece = data[pos : pos + take]
                if isinstance(self._sink, bytearray):
                    self._sink += piece
                elif self._sink is not None:
                    jobs.append((self._sink, piece))
                self._left -= take
                pos += take
                if not self._left:
                    self._end_member()
            elif self._pad:
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
            else:
                take = min(_BLOCK - len(self._head), n - pos)
                self._head += data[pos : pos + take]
                pos += take
                if len(self._head) == _BLOCK:
                    head = bytes(self._head)
                    self._head.clear()
                    self._header(head, self.offset + pos - _BLOCK)
        self.offset += n
        return jobs

    def finish(self) -> None:
        """Raise if the stream stopped inside a member or before the end-of-archive block."""
        if self.ended:
            return
        if self._left or self._head:
            where = f"inside member {self._member!r}" if self._left else "inside a header"
            raise WeightsError(
                f"{self.label} is truncated: the tar stream ends {where} after {self.offset} bytes"
            )
        raise WeightsError(
            f"{self.label} is truncated: no end-of-archive block after {self.offset} bytes"
        )

    def digests(self) -> dict[str, tuple[int, str | None]]:
        """Member name -> (size, sha256 hex or None when not hashed). Call after hashing."""
        return {
            name: (size, h.hexdigest() if h is not None else None)
            for name, (size, h) in self.files.items()
        }

    def _fail(self, name: str, why: str) -> WeightsError:
        return WeightsError(f"{self.label}: refusing tar member {name!r}: {why}")

    def _header(self, head: bytes, at: int) -> None:
        if head == _ZERO_BLOCK:
            self.ended = True  # GNU tar stops at the first zero block too
            return
        if not looks_like_tar(head):
            if at == 0:
                raise WeightsError(f"{self.label} is not a tar archive")
            raise WeightsError(f"{self.label}: corrupt tar header at byte {at}")
        try:
            stored = _number(head[148:156])
            size = _number(head[124:136])
        except ValueError as e:
            raise WeightsError(f"{self.label}: corrupt tar header at byte {at}") from e
        unsigned = sum(head[:148]) + 8 * 32 + sum(head[156:])
        signed = unsigned - 256 * sum(1 for b in head[:148] + head[156:] if b > 127)
        if stored not in (unsigned, signed):
            raise WeightsError(f"{self.label}: corrupt tar header at byte {at} (bad checksum)")
        kind = head[156:157]
        if kind in (b"L", b"K", b"x", b"g"):
            if size > _META_LIMIT:
                raise WeightsError(f"{self.label}: oversized tar extension header at byte {at}")
            self._start_data(size, bytearray(), kind.decode(), "<extension header>")
            return
        pending, self._pending = self._pending, {}
        name = pending.get("path")
        if name is None:
            name = _text(head[:100])
            if head[257:263] == b"ustar\x00" and head[345] != 0:
                name = _text(head[345:500]) + "/" + name
        link = pending.get("linkpath", _text(head[157:257]))
        size = pending.get("size", size)
        self._member_header(name, kind, link, size)

    def _member_header(self, raw: str, kind: bytes, link: str, size: int) -> None:
        name = self._clean(raw, raw)
        for i in range(1, name.count("/") + 1):
            if "/".join(name.split("/")[:i]) in self.links:
                raise self._fail(raw, "it lies below a symbolic link")
        if name == MARKER_NAME:
            raise self._fail(raw, "reserved name")
        first = self._members == 0
        self._members += 1
        if kind in (b"0", b"\0", b"7"):
            if not name:
                raise self._fail(raw, "empty file name")
            self.links.discard(name)
            if first and name == MANIFEST_NAME:
                self._hash = True
                if size > _MANIFEST_LIMIT:
                    raise self._fail(raw, "manifest too large")
                self._start_data(size, bytearray(), "manifest", name)
                return
            if self._hash is None:
                self._hash = False
            if name == MANIFEST_NAME and self.manifest is not None:
                raise self._fail(raw, "second manifest")
            h = hashlib.sha256() if self._hash else None
            self.files[name] = (size, h)
            self._start_data(size, h, "file", name)
        elif kind == b"5":
            self._start_data(size, None, "dir", name)
        elif kind == b"2":
            if link.startswith("/") or self._escapes(name, link):
                raise self._fail(raw, f"symbolic link to {link!r} points outside the folder")
            self.files.pop(name, None)
            self.links.add(name)
        elif kind == b"1":
            target = self._clean(link, raw)
            if target not in self.files:
                raise self._fail(raw, f"hard link to {link!r}, which is not a file in the archive")
            self.files[name] = self.files[target]
        elif kind in (b"3", b"4", b"6"):
            raise self._fail(raw, "device files and FIFOs are not allowed")
        else:
            raise self._fail(raw, f"unsupported member type {kind!r}")

    def _clean(self, path: str, raw: str) -> str:
        if path.startswith("/"):
            raise self._fail(raw, "absolute path")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._fail(raw, "'..' in path")
        return "/".join(parts)

    @staticmethod
    def _escapes(name: str, link: str) -> bool:
        parts = name.split("/")[:-1]
        for p in link.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not parts:
                    return True
                parts.pop()
            else:
                parts.append(p)
        return False

    def _start_data(self, size: int, sink: Any, kind: str, name: str) -> None:
        self._left = size
        self._pad = -size % _BLOCK
        self._sink = sink
        self._kind = kind
        self._member = name
        if not size:
            self._end_member()

    def _end_member(self) -> None:
        sink, kind = self._sink, self._kind
        self._sink = None
        if kind in ("L", "K"):
            key = "path" if kind == "L" else "linkpath"
            self._pending[key] = bytes(sink).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == "x":
            try:
                records = _pax_records(bytes(sink))
            except ValueError as e:
                raise WeightsError(
                    f"{self.label}: corrupt pax header near byte {self.offset}"
                ) from e
            for key in ("path", "linkpath"):
                if key in records:
                    self._pending[key] = records[key]
            if "size" in records:
                self._pending["size"] = int(records["size"])
            if any(k.startswith("GNU.sparse") for k in records):
                raise self._fail(records.get("path", "?"), "sparse files are not supported")
        elif kind == "manifest":
            self.manifest = parse_manifest(bytes(sink), self.label)


def parse_manifest(data: bytes, label: str) -> dict[str, Any]:
    """Parse and check the manifest's shape: {"format": 1, "files": {rel: {size, sha256}}}."""
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        ok = manifest.get("format") == 1 and isinstance(files, dict)
        ok = ok and all(
            isinstance(v, dict)
            and isinstance(v.get("size"), int)
            and isinstance(v.get("sha256"), str)
            and len(v["sha256"]) == 64
            for v in files.values()
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{label}: {MANIFEST_NAME} is not a valid manifest ({e})") from e
    if not ok:
        raise WeightsError(f"{label}: {MANIFEST_NAME} is not a valid manifest (format 1 expected)")
    return manifest


# --- streaming into GNU tar -------------------------------------------------------------------


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
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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
