"""Download and extract a tarball with `pget -x` (Replicate's downloader), free space first."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from cogvx.errors import WeightsError
from cogvx.net.http import content_range_total, open_first
from cogvx.weights.folders import remove
from cogvx.weights.space import check_floor, check_space

Log = Callable[[str], None]


def find_pget(use_pget: bool | None) -> str | None:
    """pget's path when it is to be used: `None` = when on PATH, True = required, False = never."""
    if use_pget is False:
        return None
    found = shutil.which("pget")
    if use_pget and found is None:
        raise WeightsError("use_pget=True but pget is not on PATH")
    return found


def remote_size(url: str, label: str, timeout: float, log: Log) -> int | None:
    """The tarball's size from a one-byte range request (or Content-Length); None if unknown."""
    try:
        _, conn, resp = open_first(url, 1, timeout, log)
    except WeightsError as e:  # pget may still get it (its own retries, a cache in front)
        log(f"weights: could not learn the size of {label} ({e}); checking space after pget")
        return None
    try:
        if resp.status == 206:
            return content_range_total(resp, label)
        return resp.length  # the server ignores ranges: Content-Length, None when not sent
    finally:
        conn.close()


def run_pget(
    pget: str, url: str, tmp: Path, label: str, timeout: float, log: Log, lock_fd: int | None = None
) -> None:
    """`pget -x url tmp`, refused first when the free space next to `tmp` is too small.

    pget inherits `lock_fd` (the temporary folder's lock): if this process is killed while
    pget still writes, the next install sees the folder in use and leaves it alone."""
    size = remote_size(url, label, timeout, log)
    if size is not None:
        check_space(size, tmp.parent, label)
    query = urlsplit(url).query

    def redact(line: str) -> str:
        line = line.replace(url, label)
        return line.replace(query, "<redacted>") if query else line

    pid_file = tmp.parent / f"{tmp.name}.pget.pid"
    log(f"weights: pget -x {label} {tmp}")
    fds = () if lock_fd is None else (lock_fd,)
    cmd = [pget, "-x", "--pid-file", str(pid_file), url, str(tmp)]
    rc, tail = _run_logged(cmd, redact, log, fds)
    if rc != 0 and any("pid-file" in line and "unknown" in line for line in tail):
        log("weights: this pget has no --pid-file option; retrying without it")
        remove(tmp)
        rc, tail = _run_logged([pget, "-x", url, str(tmp)], redact, log, fds)
    pid_file.unlink(missing_ok=True)
    if rc != 0:
        raise WeightsError(f"pget failed downloading {label} (exit {rc}): {'; '.join(tail[-5:])}")
    if not tmp.exists():
        raise WeightsError(f"pget reported success for {label} but created nothing at {tmp}")
    if size is None:  # no size to check up front: at least the floor must be left free
        check_floor(tmp.parent, label, sum(p.stat().st_size for p in _files(tmp)))


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _run_logged(
    cmd: list[str], redact: Callable[[str], str], log: Log, pass_fds: tuple[int, ...]
) -> tuple[int, list[str]]:
    tail: list[str] = []
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        pass_fds=pass_fds,
    ) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = redact(raw.rstrip())
                log(f"pget: {line}")
                tail = (tail + [line])[-20:]
        except BaseException:  # interrupted: pget must not outlive the install lock
            proc.kill()
            proc.wait()
            raise
    return proc.returncode, tail
