"""Loopback HTTP server for the weight-fetch tests and benchmark.

Serves files from memory or disk with keep-alive and Range support, and can misbehave on purpose:
ignore ranges, drop a connection half-way, cap each connection's rate, hold requests at a gate.

CLI (benchmark): python -m tests.support.weights_server FILE [--rate-mbps R]  (prints the URL)
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PIECE = 256 << 10


class WeightsServer:
    """A threaded HTTP/1.1 server on 127.0.0.1 with switchable behaviours (use as a context)."""

    def __init__(
        self,
        files: dict[str, bytes | Path],
        *,
        ranges: bool = True,
        drop: Callable[[int], bool] | None = None,
        rate: float | None = None,
        statuses: dict[str, int] | None = None,
        redirects: dict[str, str] | None = None,
        short_by: int = 0,
        hang: Callable[[int], bool] | None = None,
        hang_s: float = 3.0,
        max_answer: int | None = None,
        open_ended: bool = False,
        no_length: bool = False,
        tls: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """files: URL path -> body; drop(start) -> True drops the first answer for that offset.

        hang(start) -> True: the first answer for that offset stops half-way for hang_s seconds.
        rate: bytes/s per connection; short_by: send that many bytes fewer than announced.
        max_answer: answer at most this many bytes of a range (honestly, in Content-Range);
        open_ended: answer every range up to the end of the file.
        no_length: ignore ranges and send no Content-Length (the body ends when the connection
        closes). tls: a server-side context: serve HTTPS. headers: sent in place of the real
        headers of the same names, or added (a malformed Content-Range, say).
        """
        self.files = files
        self.ranges = ranges
        self.drop = drop
        self.rate = rate
        self.statuses = statuses or {}
        self.redirects = redirects or {}
        self.short_by = short_by
        self.hang = hang
        self.hang_s = hang_s
        self.max_answer = max_answer
        self.open_ended = open_ended
        self.no_length = no_length
        self.headers = headers or {}
        self.gate = threading.Event()
        self.gate.set()
        self.requests: list[tuple[str, str | None]] = []
        self.dropped = 0
        self.hung = 0
        self._seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        """Full URL of a path on this server."""
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def count(self, path: str) -> int:
        """GET requests seen for a path (query ignored)."""
        with self._lock:
            return sum(1 for p, _ in self.requests if p == path)

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _first_time(self, path: str, start: int) -> bool:
        with self._lock:
            key = (path, start)
            if key in self._seen:
                return False
            self._seen.add(key)
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    _sent: frozenset[str] = frozenset()  # header names sent in this answer so far

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def send_header(self, keyword: str, value: str) -> None:
        forced = self.server.owner.headers  # type: ignore[attr-defined]
        super().send_header(keyword, forced.get(keyword, value))
        self._sent |= {keyword}

    def end_headers(self) -> None:
        forced = self.server.owner.headers  # type: ignore[attr-defined]
        for keyword, value in forced.items():
            if keyword not in self._sent:
                super().send_header(keyword, value)
        self._sent = frozenset()
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802
        srv: WeightsServer = self.server.owner  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        with srv._lock:
            srv.requests.append((path, self.headers.get("Range")))
        srv.gate.wait()
        if path in srv.statuses:
            return self._small(srv.statuses[path], b"<html>nope</html>")
        if path in srv.redirects:
            self.send_response(302)
            self.send_header("Location", srv.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = srv.files.get(path)
        if body is None:
            return self._small(404, b"<html>not found</html>")
        size = body.stat().st_size if isinstance(body, Path) else len(body)
        start, end = 0, size - 1
        want = self.headers.get("Range")
        if srv.ranges and not srv.no_length and want and want.startswith("bytes="):
            first, _, last = want[6:].partition("-")
            start = int(first)
            end = min(int(last), size - 1) if last and not srv.open_ended else size - 1
            if srv.max_answer:
                end = min(end, start + srv.max_answer - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        length = end - start + 1
        if srv.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()
        send = max(0, length - srv.short_by)
        hang = False
        if srv.drop is not None and srv.drop(start) and srv._first_time(path, start):
            send = length // 2
            with srv._lock:
                srv.dropped += 1
        elif srv.hang is not None and srv.hang(start) and srv._first_time(path, start):
            send, hang = length // 2, True
            with srv._lock:
                srv.hung += 1
        try:
            self._body(body, start, send, srv.rate)
        except OSError:
            self.close_connection = True
            return
        if hang:
            time.sleep(srv.hang_s)  # silent but open: only the client's stall timeout helps
        if send < length:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _small(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self, body: bytes | Path, start: int, count: int, rate: float | None) -> None:
        t0 = time.monotonic()
        sent = 0
        out = self.connection.fileno()
        fd = os.open(body, os.O_RDONLY) if isinstance(body, Path) else None
        view = memoryview(body) if fd is None else None
        try:
            while sent < count:
                n = min(PIECE, count - sent)
                if fd is not None:
                    n = os.sendfile(out, fd, start + sent, n)
                    if n == 0:
                        raise OSError("short file")
                else:
                    self.connection.sendall(view[start + sent : start + sent + n])
                sent += n
                if rate:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        finally:
            if fd is not None:
                os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """Serve one file at /<name> until killed; print its URL first."""
    parser = argparse.ArgumentParser(description="serve a file on loopback for benchmarks")
    parser.add_argument("file", type=Path)
    parser.add_argument("--rate-mbps", type=float, default=0, help="cap per connection, MB/s")
    args = parser.parse_args(argv)
    rate = args.rate_mbps * 1e6 if args.rate_mbps else None
    server = WeightsServer({f"/{args.file.name}": args.file.resolve()}, rate=rate)
    with server:
        print(server.url(f"/{args.file.name}"), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
