"""CogClient against a local HTTP server that answers like coglet right after a sync answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cogvx.webui import client
from cogvx.webui.client import CogClient

AT_CAPACITY = {"error": "At capacity - all prediction slots busy", "status": "failed"}  # coglet's


class SlotServer(ThreadingHTTPServer):
    """READY on /health-check; POST /predictions answers 409 `busy_posts` times, then 200."""

    def __init__(self, busy_posts: int) -> None:
        super().__init__(("127.0.0.1", 0), SlotHandler)
        self.busy_posts = busy_posts
        self.posts: list[dict] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class SlotHandler(BaseHTTPRequestHandler):
    server: SlotServer

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/health-check":
            self._send(200, {"status": "READY"})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append(request)
        if len(self.server.posts) <= self.server.busy_posts:
            self._send(409, AT_CAPACITY)
        else:
            self._send(200, {"status": "succeeded", "output": "a cat", "logs": "ran\n"})


@pytest.fixture
def slots(request: pytest.FixtureRequest) -> Iterator[SlotServer]:
    server = SlotServer(request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("slots", [3], indirect=True)
def test_a_409_after_ready_is_retried_until_the_slot_is_free(slots: SlotServer) -> None:
    prediction = CogClient(slots.url).predict({"prompt": "a cat"})
    assert prediction.ok, prediction
    assert (prediction.output, prediction.logs) == ("a cat", "ran\n")
    assert slots.posts == [{"input": {"prompt": "a cat"}}] * 4


@pytest.mark.parametrize("slots", [10**6], indirect=True)
def test_a_409_past_the_wait_budget_is_a_rejection_naming_it(
    slots: SlotServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "BUSY_WAIT_S", 0.5)
    prediction = CogClient(slots.url).predict({"prompt": "a cat"})
    assert prediction.status == "rejected"
    assert "HTTP 409" in prediction.error and "At capacity" in prediction.error
    assert len(slots.posts) > 1  # retried within the budget before giving up
