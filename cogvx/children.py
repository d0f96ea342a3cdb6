"""Child processes the project starts (model servers, multi-GPU workers): a free loopback port,
dying with the parent, and stopping a whole process group."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In a child (Linux): get SIGTERM when the parent dies, even by SIGKILL; else a no-op."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """End `proc`'s process group (it was started with start_new_session=True): SIGTERM, wait,
    then SIGKILL whatever is left (a worker may outlive its server)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
