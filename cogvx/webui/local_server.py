"""Run a model for the page: `tools/serve.py <config>` (coglet) in a child process on loopback.

The page then talks to it like to any Cog server, so a local run and a remote one take the same
path: the runner's own setup(), checks and outputs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from cogvx.children import die_with_parent, free_port, stop_group
from cogvx.webui.client import READY, CogClient, ServerError

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "tools" / "serve.py"
SETUP_TIMEOUT_S = 1800.0  # real weights: download + load
PORT_RETRIES = 3  # new ports tried when another process bound the free one first
ADDRESS_IN_USE = "Address already in use"  # coglet's words when its port is taken


def default_python() -> str:
    """The model environment's interpreter: the repository's .venv when there is one (the page
    itself may run in the lighter web environment), else this one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


class LocalServer:
    """A coglet server of `config` owned by the page: started, waited for, stopped.

    `port`: fixed; default a free one, replaced by another (up to PORT_RETRIES times) when some
    other process binds it between the pick and the server's start."""

    def __init__(
        self,
        config: str | Path,
        weights: str | None = None,
        python: str | None = None,
        port: int | None = None,
    ):
        self.config = Path(config).resolve()
        if not self.config.is_file():
            raise ValueError(f"config {config}: no such file (e.g. cog.yaml, cog.i2v.yaml)")
        self.weights = weights
        self.python = python or default_python()
        self._auto_port = port is None
        self.port = port or free_port()
        self.client = CogClient(f"http://127.0.0.1:{self.port}")
        self._tmp = Path(tempfile.mkdtemp(prefix="cogvx-web-server-"))
        self.log_path = self._tmp / "server.log"
        self._log: IO[bytes] | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = SETUP_TIMEOUT_S) -> CogClient:
        """Start the server and wait until its setup() finished; raise with its log if it failed.

        Only from the main thread (tools/web.py's main() calls it before the page runs; Gradio's
        callbacks never do): the server dies with the page through PR_SET_PDEATHSIG, which Linux
        fires when the *thread* that started the child exits. The main thread lives as long as
        the process; a short-lived thread would take the server down with it. (The multi-GPU
        ranks' `exit_with_parent` needs a `multiprocessing` child; this one is coglet.)"""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                f"LocalServer.start called from thread {threading.current_thread().name!r}; call "
                "it from the main thread (PR_SET_PDEATHSIG stops the server when the thread that "
                "started it exits)"
            )
        deadline = time.monotonic() + timeout
        retries = PORT_RETRIES if self._auto_port else 0
        while True:
            self._launch()
            try:
                left = max(0.0, deadline - time.monotonic())
                health = self.client.wait_ready(left, alive=self._alive)
                break
            except ServerError as exc:
                exited = not self._alive()
                self.stop()
                if retries and exited and ADDRESS_IN_USE in self.log_tail():
                    retries -= 1  # another process took the free port first: take a new one
                    self.port = free_port()
                    self.client = CogClient(f"http://127.0.0.1:{self.port}")
                    continue
                raise ServerError(f"{exc}\n--- server log ---\n{self.log_tail()}") from exc
        if health.get("status") != READY:
            self.stop()
            raise ServerError(f"setup failed ({health.get('status')}):\n{self.log_tail()}")
        return self.client

    def _launch(self) -> None:
        """Start tools/serve.py on self.port, its output in a fresh log."""
        cmd = [self.python, str(SERVE), str(self.config), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--workdir", str(self._tmp)]
        if self.weights:
            cmd += ["--weights", self.weights]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends coglet's worker too
            preexec_fn=die_with_parent,  # SIGTERM when this (the main) thread exits
        )

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-chars:].decode(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and its worker (SIGTERM to the group, then SIGKILL)."""
        if self.proc is not None:
            stop_group(self.proc, timeout)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop the server and remove its working folder."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> CogClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
