"""A small client of a Cog server's HTTP API (stdlib only): schema, health, one prediction.

The server address is the operator's (a command-line flag), never a page visitor's input.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY, TERMINAL = "READY", ("READY", "SETUP_FAILED", "DEFUNCT")
BUSY_WAIT_S = 30.0  # coglet can answer a sync prediction a moment before its slot is free


class ServerError(RuntimeError):
    """The Cog server did not answer, or answered something that is not Cog's API."""


@dataclass
class Prediction:
    """What one prediction returned."""

    status: str  # succeeded / failed / canceled, or "rejected" (HTTP 4xx before running)
    output: Any = None
    error: str = ""
    logs: str = ""
    metrics: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def _extension(mime: str) -> str:
    special = {"video/mp4": ".mp4", "video/webm": ".webm", "image/gif": ".gif"}
    return special.get(mime) or mimetypes.guess_extension(mime) or ".bin"


def save_data_uri(uri: str, dest_stem: Path) -> Path:
    """Write a `data:<mime>;base64,...` output to `dest_stem` + the mime type's extension."""
    head, sep, payload = uri.partition(",")
    if not uri.startswith("data:") or not sep or not head.endswith(";base64"):
        raise ServerError(f"output {uri[:60]!r}: not a base64 data: URI")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ServerError(f"output: bad base64 payload ({exc})") from exc
    path = dest_stem.with_suffix(_extension(head[5:].split(";")[0]))
    path.write_bytes(data)
    return path


class CogClient:
    """Talks to one Cog server (`http://host:port`)."""

    def __init__(self, url: str, timeout: float = 3600.0):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server {url!r}: expected an http(s):// URL")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(
        self, method: str, path: str, body: Any = None, timeout: float = 30.0
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except OSError as exc:
            raise ServerError(f"{self.url}{path}: {exc}") from exc
        try:
            return status, json.loads(raw) if raw else None
        except ValueError as exc:
            raise ServerError(f"{self.url}{path} answered {status} with non-JSON") from exc

    def openapi(self) -> dict:
        """GET /openapi.json: the runner's input schema."""
        status, body = self._request("GET", "/openapi.json")
        if status != 200 or not isinstance(body, dict):
            raise ServerError(f"{self.url}/openapi.json answered {status}")
        return body

    def health(self) -> dict:
        """GET /health-check."""
        status, body = self._request("GET", "/health-check", timeout=5)
        if status != 200 or not isinstance(body, dict):
            raise ServerError(f"{self.url}/health-check answered {status}")
        return body

    def wait_ready(self, timeout: float, alive: Any = None) -> dict:
        """Poll /health-check until setup ends; `alive()` False (a child that died) stops it."""
        deadline = time.monotonic() + timeout
        while True:
            if alive is not None and not alive():
                raise ServerError(f"{self.url}: the server process exited during setup")
            try:
                health = self.health()
                if health.get("status") in TERMINAL:
                    return health
            except ServerError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise ServerError(f"{self.url}: not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def _wait_not_busy(self, deadline: float) -> None:
        """Poll /health-check while it says BUSY, until `deadline` (monotonic)."""
        while time.monotonic() < deadline:
            try:
                if self.health().get("status") != "BUSY":
                    return
            except ServerError:
                return  # let the prediction request report it
            time.sleep(0.1)

    def predict(self, inputs: dict[str, Any]) -> Prediction:
        """POST /predictions and wait for the result (sync).

        Waits out BUSY and retries a 409 (coglet can hold the slot of its last answer a
        moment after READY), both within one BUSY_WAIT_S budget."""
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            self._wait_not_busy(deadline)
            status, body = self._request("POST", "/predictions", {"input": inputs}, self.timeout)
            if status != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not isinstance(body, dict):
            raise ServerError(f"{self.url}/predictions answered {status}: {body!r}")
        if status >= 400:
            return Prediction("rejected", error=_rejection(status, body))
        return Prediction(
            status=str(body.get("status", "")),
            output=body.get("output"),
            error=str(body.get("error") or ""),
            logs=str(body.get("logs") or ""),
            metrics=dict(body.get("metrics") or {}),
        )


def _rejection(status: int, body: dict) -> str:
    """Cog's 422 `detail` list (or any 4xx body) as one line per problem."""
    detail = body.get("detail")
    if isinstance(detail, list):
        lines = []
        for item in detail:
            where = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "input"))
            lines.append(f"{where or 'input'}: {item.get('msg', item)}")
        return "; ".join(lines)
    return f"HTTP {status}: {detail or body}"


PLAYABLE = (".mp4", ".webm")  # what the page's video player shows; other files are downloads


def show_output(output: Any, dest_stem: Path) -> tuple[Path | None, Path | None, str]:
    """Split a prediction's output for the page: (playable video, file to download, text).

    A data: URI is written under `dest_stem`; any other output (a caption) is text."""
    if isinstance(output, str) and output.startswith("data:"):
        path = save_data_uri(output, dest_stem)
        return (path if path.suffix in PLAYABLE else None), path, ""
    if output is None:
        return None, None, ""
    return None, None, output if isinstance(output, str) else json.dumps(output, indent=2)
