"""Child processes the project starts (model servers, multi-GPU workers): a free loopback port,
dying with the parent, and stopping a whole process group.

Two ways to die with the parent. `die_with_parent` (PR_SET_PDEATHSIG) is tied to the *thread*
that started the child: Linux signals the child when that thread exits, even while the process
lives, so it suits only children started from a thread that lives as long as the process (the
web UI starts its server from the main thread). `exit_with_parent` watches the parent process
itself, so `multiprocessing` children (the multi-GPU ranks, which a server may start from a
short-lived setup thread) use it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import subprocess
import threading

PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_GONE_EXIT = 75  # a `multiprocessing` child's exit code when its parent process died


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def die_with_parent() -> None:
    """In a child (Linux): get SIGTERM when the parent dies, even by SIGKILL; else a no-op.

    Linux sends it when the thread that started the child exits: start such children from a
    long-lived thread (or use `exit_with_parent`)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def exit_with_parent() -> None:
    """In a `multiprocessing` child: a daemon thread ends this process (exit code
    PARENT_GONE_EXIT) once the parent process is gone, whichever of its threads started us. It
    waits on the parent's sentinel pipe, which reaches EOF when the parent exits (even by
    SIGKILL). A no-op outside a `multiprocessing` child."""
    parent = multiprocessing.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(PARENT_GONE_EXIT)

    threading.Thread(target=watch, daemon=True, name="cogvx-parent-watch").start()


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
