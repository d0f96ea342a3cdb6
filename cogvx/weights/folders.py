"""Installed weight folders: the install lock, versions behind a symlink, readers' locks.

A tarball installs into a new folder `.<name>.v-<pid>-<ns>` next to `dest`, and `dest` becomes a
symlink to it through one atomic rename. A process that uses a version (`hold`) keeps a shared
flock on `<version>.readers` until it exits; an install only removes old versions that no
process holds, so a reinstall (a changed URL, a file that no longer matches) never replaces the
files a running process is loading. Every step here runs under the install lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cogvx.errors import WeightsError

Log = Callable[[str], None]
_HELD: dict[str, int] = {}  # folder -> fd of its readers' lock, held (LOCK_SH) until exit


@contextlib.contextmanager
def install_lock(dest: Path, log: Log) -> Iterator[None]:
    """Hold `<dest>.lock` exclusively: one install (or check) of `dest` at a time."""
    lock_path = dest.with_name(dest.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"weights: waiting for another process installing {dest} (lock {lock_path})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def current(dest: Path) -> Path | None:
    """The folder `dest` stands for now: its symlink's target, `dest` itself, or None."""
    if dest.is_symlink():
        name = os.readlink(dest)
        ours = "/" not in name and name.startswith(f".{dest.name}.v-")
        folder = dest.with_name(name) if ours else dest.resolve()  # a version may be a link
        return folder if folder.is_dir() else None
    return dest if dest.is_dir() else None


def _versions(dest: Path) -> list[Path]:
    """`dest`'s version folders (or links to folders: pget may hand back one)."""
    return [p for p in dest.parent.glob(f".{dest.name}.v-*") if p.is_dir() or p.is_symlink()]


def _ours(dest: Path, folder: Path) -> bool:
    """True for the folders an install may remove: `dest` itself and its version folders."""
    return folder == dest or (
        folder.parent == dest.parent and folder.name.startswith(f".{dest.name}.v-")
    )


def _readers(folder: Path) -> Path:
    return folder.with_name(folder.name + ".readers")


def hold(dest: Path, folder: Path) -> None:
    """Mark `folder` as used by this process (a shared lock, kept until the process exits);
    the process's hold on another folder of `dest` ends (it now uses this one)."""
    release(dest, keep=folder)
    if not _ours(dest, folder) or str(folder) in _HELD:
        return  # a folder of the user's own, behind their symlink: never removed here
    fd = os.open(_readers(folder), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)  # never blocks: removers hold LOCK_EX only under the lock
    _HELD[str(folder)] = fd


def release(dest: Path, keep: Path | None = None) -> None:
    """End this process's holds on `dest`'s folders (but `keep`): it is replacing them."""
    for name in [n for n in _HELD if n != str(keep) and _ours(dest, Path(n))]:
        os.close(_HELD.pop(name))


def _unused(folder: Path) -> int | None:
    """An fd holding `folder`'s readers' lock exclusively, or None when a process uses it."""
    fd = os.open(_readers(folder), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def retire(dest: Path, keep: Path | None, log: Log) -> None:
    """Remove `dest`'s folders other than `keep` that no process uses (a plain `dest` folder
    in use cannot be replaced: that raises)."""
    if not dest.is_symlink() and dest.is_dir() and dest != keep:
        fd = _unused(dest)
        if fd is None:
            raise WeightsError(
                f"cannot reinstall weights into {dest}: another process is using the folder "
                "(installed by an older version); stop it and retry"
            )
        _remove_locked(dest, fd)
    for old in _versions(dest):
        if old == keep:
            continue
        fd = _unused(old)
        if fd is None:
            log(f"weights: keeping {old}: another process still uses it")
            continue
        _remove_locked(old, fd)


def _remove_locked(folder: Path, fd: int) -> None:
    try:
        remove(folder)
        _readers(folder).unlink(missing_ok=True)
    finally:
        os.close(fd)


def commit(tmp: Path, dest: Path) -> Path:
    """Move the finished `tmp` to a new version folder and point `dest` at it atomically."""
    version = dest.with_name(f".{dest.name}.v-{os.getpid()}-{time.time_ns():x}")
    os.rename(tmp, version)
    link = dest.with_name(f".{dest.name}.link-{os.getpid()}")
    link.unlink(missing_ok=True)
    os.symlink(version.name, link)
    os.replace(link, dest)  # dest is a symlink, a file or absent (retire removed a folder)
    return version


def remove(path: Path) -> None:
    """Remove a file, a symlink (not its target) or a folder tree, read-only folders included."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, onerror=_writable_and_retry)


def _writable_and_retry(func: Callable[..., Any], target: str, exc: Any) -> None:
    """rmtree's error handler: a read-only folder (a tarball's 0555 dir) is made writable."""
    parent = os.path.dirname(target)
    try:
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | stat.S_IRWXU)
        if func is not os.unlink and os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)
    except OSError:
        raise exc[1] from None
