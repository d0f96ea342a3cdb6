"""Browser-test harness: tools/web.py in its own environment, and Debian's headless Chromium
driven by Playwright (no browser download: the machine has no network)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cogvx.children import free_port

REPO = Path(__file__).resolve().parents[2]
WEB_PYTHON = REPO / ".venv-web" / "bin" / "python"
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and none of Chromium's own connections (refused here, slow to time out).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PORT_RETRIES = 3  # new ports tried when another process bound the free one first
PORT_TAKEN = ("cannot find empty port", "address already in use")  # Gradio's, uvicorn's words


class WebPage:
    """`tools/web.py ARGS` on a free port, run by the web environment's python.

    `port`: fixed; default a free one, replaced by another (up to PORT_RETRIES times, in
    `wait_up`) when some other process binds it between the pick and the page's start."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, port: int | None = None):
        if not WEB_PYTHON.is_file():
            raise RuntimeError(f"{WEB_PYTHON} missing: run `bash tools/setup_env.sh`")
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self._auto_port = port is None
        self.port = port or free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="web_", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = self._launch()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _launch(self) -> subprocess.Popen:
        cmd = [str(WEB_PYTHON), str(REPO / "tools" / "web.py"), *self.args]
        return subprocess.Popen(
            [*cmd, "--port", str(self.port)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def logs(self) -> str:
        return Path(self._log.name).read_bytes().decode(errors="replace")

    def wait_up(self, timeout: float = 300.0) -> WebPage:
        """Poll the page until it answers 200 (the model server's setup comes first)."""
        deadline = time.monotonic() + timeout
        retries = PORT_RETRIES if self._auto_port else 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if retries and any(t in self.logs().lower() for t in PORT_TAKEN):
                    retries -= 1  # another process took the free port first: take a new one
                    self._log.seek(0)  # the next page's log starts afresh
                    self._log.truncate()
                    self.port = free_port()
                    self.proc = self._launch()
                    continue
                raise RuntimeError(f"web.py exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"page not up after {timeout:.0f} s:\n{self.logs()}")

    def stop(self) -> int:
        """SIGTERM (web.py then stops the model server it started); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def chromium_page(viewport: tuple[int, int] = (1280, 900)) -> Iterator:
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} missing: run `bash tools/setup_env.sh` (Debian chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            yield page
        finally:
            browser.close()


PLAYABLE_JS = """sel => { const v = document.querySelector(sel);
  return v !== null && v.readyState >= 1 && v.duration > 0 && v.error === null; }"""


def wait_playable(page, selector: str, timeout_s: float = 180.0) -> float:
    """Wait until `selector` is a <video> the browser decoded; return its duration (s)."""
    page.wait_for_function(PLAYABLE_JS, arg=selector, timeout=timeout_s * 1000)
    return float(page.evaluate("sel => document.querySelector(sel).duration", selector))
