"""The page's own model server (cogvx.webui.local_server) dies with the page process, even one
killed by SIGKILL (PR_SET_PDEATHSIG, which is why it is started from the main thread only)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cogvx.webui.client import ServerError
from cogvx.webui.local_server import LocalServer

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "tests" / "sample_runner" / "cog.yaml"
# The page's part: start the server from the main thread, say who it is, then just live.
PAGE = """
import sys, time
from cogvx.webui.local_server import LocalServer
server = LocalServer(sys.argv[1], python=sys.executable)
server.start(timeout=300)
print(server.proc.pid, server._tmp, flush=True)
time.sleep(3600)
"""


def _living(pid: int) -> bool:
    """`pid` exists and is not a zombie (one nobody reaped yet has exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def _group(pgid: int) -> list[int]:
    """The living processes of process group `pgid` (the server and coglet's worker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def test_the_server_dies_when_the_page_process_is_killed(tmp_path):
    log = open(tmp_path / "page.log", "wb")  # noqa: SIM115 (closed below)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    page = subprocess.Popen(
        [sys.executable, "-c", PAGE, str(SAMPLE)], stdout=subprocess.PIPE, stderr=log,
        stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    server = 0
    try:
        line = page.stdout.readline().decode().split()  # the server is READY
        assert line, (tmp_path / "page.log").read_text()
        server, folder = int(line[0]), Path(line[1])
        assert server in _group(server) and _living(server)
        page.kill()  # SIGKILL: no `finally`, no stop(); only the kernel can end the server
        page.wait()
        deadline = time.monotonic() + 120  # a bound for a hung server, not a speed check
        while _group(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group(server), f"still running after the page died: {_group(server)}"
    finally:
        if page.poll() is None:
            page.kill()
            page.wait()
        if server and _group(server):
            os.killpg(server, signal.SIGKILL)
        log.close()
        page.stdout.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_starting_from_another_thread_is_refused(tmp_path):
    """A thread that ends would take the server with it: refused before anything starts."""
    server = LocalServer(SAMPLE, python=sys.executable)
    caught: list[BaseException] = []

    def start() -> None:
        try:
            server.start(timeout=5)
        except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
            caught.append(exc)

    try:
        thread = threading.Thread(target=start, name="gradio-callback")
        thread.start()
        thread.join()
        assert server.proc is None
        with pytest.raises(RuntimeError, match=r"thread 'gradio-callback'; call it from the main"):
            raise caught[0]
    finally:
        server.close()


def test_a_free_port_taken_before_the_server_binds_it_is_replaced():
    """Another process binds the picked port first: the server starts on a new one."""
    server = LocalServer(SAMPLE, python=sys.executable)
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", server.port))  # someone else got the port first
            client = server.start(timeout=300)
            assert server.port != taken.getsockname()[1]
            assert client.url == f"http://127.0.0.1:{server.port}"
            assert client.health()["status"] == "READY"
    finally:
        server.close()


def test_a_fixed_port_that_is_taken_fails_naming_the_cause():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = LocalServer(SAMPLE, python=sys.executable, port=port)
        try:
            with pytest.raises(ServerError, match="Address already in use"):
                server.start(timeout=300)
            assert server.port == port
        finally:
            server.close()
