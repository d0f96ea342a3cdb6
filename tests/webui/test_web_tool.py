"""tools/web.py against a running server: one that is not READY is refused (exit 1); the
harness moves the page to a new port when another process took the free one first."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cogvx.children import free_port
from tests.support import browser
from tests.support.browser import WebPage

# The least of a Cog server's OpenAPI schema the page is built from: one text input.
SCHEMA = {
    "components": {
        "schemas": {
            "Input": {"properties": {"prompt": {"type": "string", "x-order": 0}}},
            "Output": {"type": "string", "format": "uri"},
        }
    }
}


def _handler(status: str) -> type[BaseHTTPRequestHandler]:
    class Server(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            found = {"/health-check": {"status": status}, "/openapi.json": SCHEMA}
            body = json.dumps(found.get(self.path, {"detail": "not found"})).encode()
            self.send_response(200 if self.path in found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Server


@contextmanager
def cog_server(status: str) -> Iterator[str]:
    """A loopback stand-in for a Cog server whose health is `status`; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(status))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_whose_setup_failed_is_refused() -> None:
    with cog_server("SETUP_FAILED") as url:
        web = WebPage(["--server", url])
        try:
            assert web.proc.wait(timeout=120) == 1, web.logs()
        finally:
            web.stop()
    assert f"web.py: {url}: the server is SETUP_FAILED, not READY" in web.logs()


def test_a_page_whose_free_port_was_taken_first_moves_to_a_new_one(monkeypatch) -> None:
    with socket.socket() as taken, cog_server("READY") as url:
        taken.bind(("127.0.0.1", 0))  # another process gets the harness's first pick first
        picks = iter([taken.getsockname()[1]])
        monkeypatch.setattr(browser, "free_port", lambda: next(picks, None) or free_port())
        web = WebPage(["--server", url])
        try:
            assert web.wait_up(timeout=120).port != taken.getsockname()[1]
            assert web.url == f"http://127.0.0.1:{web.port}"
            assert "Cannot find empty port" not in web.logs()  # this page's log only
        finally:
            code = web.stop()
    assert code == 0, web.logs()
