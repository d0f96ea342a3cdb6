"""Drive a real coglet server (started through tools/serve.py) from tests.

    from tests.support.coglet_harness import CogletServer, save_output

    with CogletServer("cog.yaml", env={"COG_WEIGHTS": str(tiny)}) as server:
        health = server.wait_ready(timeout=120)
        assert health["status"] == "READY", server.logs()
        status, body = server.predict({"prompt": "a cat"}, timeout=300)
        video = save_output(body["output"], tmp_path / "out.mp4")

Each server gets a free port and, by default, its own temporary working directory (so several
servers, even for different configs of one repo, can run at once). The server runs in its own
process group and is always stopped on exit, with its worker.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from cogvx.children import free_port, stop_group

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "tools" / "serve.py"
TERMINAL = {"READY", "SETUP_FAILED", "DEFUNCT"}

__all__ = ["CogletServer", "ServerError", "decode_data_uri", "free_port", "save_output"]


class ServerError(RuntimeError):
    """The server exited, or did not answer in time; the message ends with its logs."""


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """Split a `data:<mime>;base64,<payload>` URI into (mime type, bytes)."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError(f"output {uri[:60]!r}: not a data: URI")
    header, payload = uri[5:].split(",", 1)
    mime = header.split(";")[0]
    data = (
        base64.b64decode(payload)
        if header.endswith(";base64")
        else urllib.parse.unquote_to_bytes(payload)
    )
    return mime, data


def save_output(uri: str, dest: str | Path) -> Path:
    """Write a data-URI output (what coglet returns for a Path) to `dest`; return the path."""
    _, data = decode_data_uri(uri)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return dest


class CogletServer:
    """One coglet server for a cog config, reachable at `self.url` once `wait_ready()` returns.

    config: cog.yaml path (relative paths are taken from the repo root).
    env: extra environment variables (e.g. COG_WEIGHTS) on top of this process's environment.
    port: fixed port; default a free one. cwd: coglet's working directory; default a fresh
    temporary folder (removed on stop); pass "root" to run in the config's folder as an image
    does. extra_args: more tools/serve.py arguments (e.g. ["--upload-url", url]).
    """

    def __init__(
        self,
        config: str | Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        cwd: str | Path | None = None,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
    ) -> None:
        config = Path(config)
        self.config = config if config.is_absolute() else REPO / config
        self.env = dict(env or {})
        self._auto_port = port is None
        self.port = port or free_port(host)
        self.host = host
        self.extra_args = list(extra_args or [])
        self._own_cwd = cwd is None
        self.cwd = None if cwd in (None, "root") else Path(cwd)  # type: ignore[arg-type]
        self.proc: subprocess.Popen | None = None
        self._log_file: Any = None
        self._tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> CogletServer:
        """Launch tools/serve.py in a new process group, logging to a temporary file."""
        if self.proc is not None:
            raise RuntimeError("server already started")
        self._tmp = Path(tempfile.mkdtemp(prefix="coglet_harness_"))
        if self._own_cwd:
            self.cwd = self._tmp / "work"
            self.cwd.mkdir()
        cmd = [sys.executable, str(SERVE), str(self.config), "--port", str(self.port)]
        cmd += ["--host", self.host, *self.extra_args]
        if self.cwd is not None:
            cmd += ["--workdir", str(self.cwd)]
        self._log_file = open(self._tmp / "server.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            env={**os.environ, **self.env},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and its worker (SIGTERM, then SIGKILL), and remove temporary files."""
        if self.proc is not None:
            stop_group(self.proc, timeout)
        if self._tmp is not None:
            self._final_logs = self.logs()
            if self._log_file is not None:
                self._log_file.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> CogletServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def logs(self) -> str:
        """Everything the server (serve.py, coglet, the worker) wrote to stdout/stderr so far."""
        if self._tmp is None:
            return getattr(self, "_final_logs", "")
        return (self._tmp / "server.log").read_bytes().decode(errors="replace")

    def _fail(self, message: str) -> ServerError:
        tail = self.logs()[-6000:]
        return ServerError(f"{message} ({self.config.name} on {self.url})\n--- logs ---\n{tail}")

    # -- HTTP ---------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """Send one request; return (HTTP status, decoded JSON body or raw text)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def health(self) -> dict:
        """GET /health-check (raises if the server does not answer)."""
        status, body = self.request("GET", "/health-check", timeout=5)
        if status != 200 or not isinstance(body, dict):
            raise self._fail(f"/health-check answered {status}: {body!r}")
        return body

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Poll /health-check until READY or SETUP_FAILED; return that health JSON."""
        if self.proc is None:
            self.start()
        deadline = time.monotonic() + timeout
        retries = 3 if self._auto_port else 0
        while True:
            if self.proc.poll() is not None:  # type: ignore[union-attr]
                if retries and "Address already in use" in self.logs():
                    retries -= 1  # another process took the free port first: take a new one
                    self.stop()
                    self.proc, self.port = None, free_port(self.host)
                    self.start()
                    continue
                raise self._fail(f"server exited with code {self.proc.returncode} before ready")  # type: ignore[union-attr]
            try:
                health = self.health()
                if health.get("status") in TERMINAL:
                    return health
            except (OSError, ServerError):
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise self._fail(f"server not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def predict(
        self,
        inputs: dict,
        timeout: float = 300.0,
        headers: dict[str, str] | None = None,
        wait_busy: bool = True,
    ) -> tuple[int, dict]:
        """POST /predictions {"input": inputs}; return (HTTP status, response JSON).

        Waits (up to 30 s) while the server still reports BUSY, and retries a 409 for as
        long: coglet can answer a sync prediction a moment before its slot is free (even
        after /health-check says READY), and a POST then would get 409.
        """
        deadline = time.monotonic() + 30
        while True:
            if wait_busy:
                self._wait_not_busy(30)
            try:
                status, body = self.request(
                    "POST", "/predictions", {"input": inputs}, headers, timeout
                )
            except OSError as exc:
                raise self._fail(f"POST /predictions failed: {exc}") from exc
            if not wait_busy or status != 409 or time.monotonic() > deadline:
                return status, body
            time.sleep(0.05)  # READY, but the slot of the last answer is not free yet

    def _wait_not_busy(self, seconds: float) -> None:
        """Poll /health-check while it says BUSY, for at most `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if self.health().get("status") != "BUSY":
                    return
            except (OSError, ServerError):
                return
            time.sleep(0.05)

    def predict_async(self, inputs: dict) -> str:
        """Start a prediction with `Prefer: respond-async` (202); return its id.

        coglet has no GET /predictions/<id>: results of async predictions only go to a
        webhook, so use this for cancel tests and wait_idle() for the end.
        """
        deadline = time.monotonic() + 30
        while True:
            self._wait_not_busy(30)
            status, body = self.request(
                "POST", "/predictions", {"input": inputs}, {"Prefer": "respond-async"}
            )
            # A slot can still be held a moment after READY: the last sync answer came first.
            if status != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if status != 202:
            raise self._fail(f"async POST /predictions answered {status}: {body!r}")
        return body["id"]

    def cancel(self, prediction_id: str) -> tuple[int, Any]:
        """POST /predictions/<id>/cancel (200 when the id is running)."""
        return self.request("POST", f"/predictions/{prediction_id}/cancel")

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """Poll /health-check until it is READY again (not BUSY); return the health JSON.

        A health check that times out or fails (a loaded machine) is polled again until the
        deadline; SETUP_FAILED or DEFUNCT ends the wait at once.
        """
        deadline = time.monotonic() + timeout
        status = "not answering"
        while True:
            try:
                health = self.health()
                status = str(health.get("status"))
                if status == "READY":
                    return health
                if status in TERMINAL:
                    break
            except (OSError, ServerError) as exc:
                reason = str(exc).split("\n", 1)[0] or type(exc).__name__
                status = f"not answering ({reason})"
                if self.proc is not None and self.proc.poll() is not None:
                    raise self._fail(f"server exited with code {self.proc.returncode}") from exc
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise self._fail(f"server is {status}, not READY")

    def wait_log(self, *texts: str, timeout: float = 30.0) -> str:
        """Poll the logs until one line holds every one of `texts`; return that line.

        Pass a prediction id among `texts` to wait for that prediction's own line (e.g. its
        first line from run(): a cancel sent before run() starts is lost by coglet).
        """
        deadline = time.monotonic() + timeout
        while True:
            for line in self.logs().splitlines():
                if all(text in line for text in texts):
                    return line
            if self.proc is not None and self.proc.poll() is not None:
                raise self._fail(f"server exited before a log line with {texts!r}")
            if time.monotonic() > deadline:
                raise self._fail(f"no log line with {texts!r} after {timeout:.0f} s")
            time.sleep(0.05)
