"""tools/web.py against a running server that is not READY: it says so and exits 1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.browser import WebPage


class FailedSetup(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"status": "SETUP_FAILED"}).encode()
        self.send_response(200 if self.path == "/health-check" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_whose_setup_failed_is_refused() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailedSetup)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    web = WebPage(["--server", url])
    try:
        assert web.proc.wait(timeout=120) == 1, web.logs()
    finally:
        web.stop()
        server.shutdown()
        server.server_close()
    assert f"web.py: {url}: the server is SETUP_FAILED, not READY" in web.logs()
