"""A loopback HTTP server that answers slowly: a trickled body or headers, or no answer at all."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

TRICKLE_EVERY_S = 0.05  # one byte this often: far inside any read timeout the tests set
GIVE_UP_S = 5.0  # a handler stops on its own after this long (the client should go first)


class SlowServer:
    """`with SlowServer("body") as srv:` serves every connection in one of three ways.

    "body": a 200 answer with its headers at once, then one body byte every TRICKLE_EVERY_S;
    "headers": the status line, then one header byte every TRICKLE_EVERY_S; "silent": reads the
    request and never answers. `connections` counts the connections accepted.
    """

    def __init__(self, mode: str, tls: ssl.SSLContext | None = None) -> None:
        assert mode in ("body", "headers", "silent"), mode
        self.mode, self.tls = mode, tls
        self.connections = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> SlowServer:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            request = b""
            while b"\r\n\r\n" not in request:
                got = conn.recv(65536)
                if not got:
                    return
                request += got
            if self.mode == "silent":
                conn.settimeout(GIVE_UP_S)
                conn.recv(1)  # until the client gives up (or GIVE_UP_S)
                return
            if self.mode == "body":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            end = time.monotonic() + GIVE_UP_S
            while time.monotonic() < end and not self._stop.is_set():
                conn.sendall(b"x")  # fails once the client has shut the connection
                time.sleep(TRICKLE_EVERY_S)
