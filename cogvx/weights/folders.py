"""Installed weight folders: the install lock, versions behind a symlink, readers' locks.

A tarball installs into a temporary folder `.<name>.partial-<pid>-<ns>` next to `dest`, which
becomes a version folder `.<name>.v-<pid>-<ns>`; `dest` becomes a symlink to it through one
atomic rename. Each of these folders (and a plain `dest` of older releases) has a lock file
`<folder>.readers`: a process using the folder (`hold`, an install writing it) keeps a shared
flock on it until it exits or moves on; a remover takes it exclusively, removes the folder, then
unlinks the lock file. So a reinstall never replaces files a running process is loading, and
what crashed or killed processes left (old versions, temporary folders, lock files) goes at the
next install or load. Every step here runs under the install lock; the lock files are safe
without it too: after each flock the path must still name the locked file (a remover may unlink
it between open and flock), else it is opened again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cogvx.errors import WeightsError

Log = Callable[[str], None]
_HELD: dict[str, int] = {}  # folder -> fd of its readers' lock, held (LOCK_SH) until exit
_LOCK_SUFFIXES = (".readers", ".pget.pid")  # files beside a folder (pget's pid file: temps)


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


def _patterns(dest: Path) -> dict[str, re.Pattern[str]]:
    """The names of `dest`'s version, temporary and link entries (older temps lack `-<ns>`)."""
    name = re.escape(dest.name)
    return {
        "version": re.compile(rf"\.{name}\.v-\d+-[0-9a-f]+"),
        "temp": re.compile(rf"\.{name}\.partial-\d+(?:-[0-9a-f]+)?"),
        "link": re.compile(rf"\.{name}\.link-\d+"),
    }


def current(dest: Path) -> Path | None:
    """The folder `dest` stands for now: its symlink's target, `dest` itself, or None."""
    if dest.is_symlink():
        name = os.readlink(dest)
        ours = _patterns(dest)["version"].fullmatch(name) is not None
        folder = dest.with_name(name) if ours else dest.resolve()  # a version may be a link
        return folder if folder.is_dir() else None
    return dest if dest.is_dir() else None


def _ours(dest: Path, folder: Path) -> bool:
    """True for the folders an install may remove: `dest` itself and its version folders."""
    return folder == dest or (
        folder.parent == dest.parent
        and _patterns(dest)["version"].fullmatch(folder.name) is not None
    )


def _readers(folder: Path) -> Path:
    return folder.with_name(folder.name + ".readers")


def _lock(path: Path, how: int) -> int | None:
    """An fd of the file at `path` (created if absent) locked `how`; None when LOCK_NB failed.

    The classic flock + unlink race: a remover may unlink the file between our open and flock,
    leaving us a lock on a file nobody else can find. So the path must still name the locked
    file (same device and inode), else it is opened again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, how)
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except BlockingIOError:
            os.close(fd)
            return None
        except FileNotFoundError:
            pass  # unlinked after we locked it: try the file that is there now
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _lock_shared(path: Path) -> int:
    fd = _lock(path, fcntl.LOCK_SH)  # blocks only while a remover holds it (never for long)
    assert fd is not None
    return fd


def _unused(folder: Path) -> int | None:
    """An fd holding `folder`'s readers' lock exclusively, or None when a process uses it."""
    return _lock(_readers(folder), fcntl.LOCK_EX | fcntl.LOCK_NB)


def hold(dest: Path, folder: Path) -> None:
    """Mark `folder` as used by this process (a shared lock, kept until the process exits);
    the process's hold on another folder of `dest` ends (it now uses this one)."""
    release(dest, keep=folder)
    if not _ours(dest, folder) or str(folder) in _HELD:
        return  # a folder of the user's own, behind their symlink: never removed here
    _HELD[str(folder)] = _lock_shared(_readers(folder))


def release(dest: Path, keep: Path | None = None) -> None:
    """End this process's holds on `dest`'s folders (but `keep`): it is replacing them."""
    for name in [n for n in _HELD if n != str(keep) and _ours(dest, Path(n))]:
        os.close(_HELD.pop(name))


def new_temp(dest: Path) -> Path:
    """A fresh temporary install folder's path next to `dest` (not created), held by this
    process until `commit` turns it into a version or `discard` removes it."""
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}-{time.time_ns():x}")
    _HELD[str(tmp)] = _lock_shared(_readers(tmp))
    return tmp


def held_fd(folder: Path) -> int | None:
    """The fd of this process's lock on `folder` (a child given it holds the folder too)."""
    return _HELD.get(str(folder))


def discard(tmp: Path) -> None:
    """Remove this process's temporary folder `tmp` and its lock file (an install failed)."""
    fd = _HELD.pop(str(tmp), None)
    try:
        remove(tmp)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone: it can be unlinked
            _readers(tmp).unlink(missing_ok=True)
    except BlockingIOError:
        pass  # another process shares the lock: the next install removes the file
    finally:
        if fd is not None:
            os.close(fd)


def _leftovers(dest: Path) -> dict[Path, str]:
    """`dest`'s version and temporary folders and links (folder -> kind), also those of which
    only a lock file is left."""
    found: dict[Path, str] = {}
    patterns = _patterns(dest)
    for entry in os.scandir(dest.parent):
        base = entry.name
        if patterns["link"].fullmatch(base):
            found[dest.parent / base] = "link"
            continue
        base = next((base[: -len(s)] for s in _LOCK_SUFFIXES if base.endswith(s)), base)
        for kind in ("version", "temp"):
            if patterns[kind].fullmatch(base):
                found[dest.parent / base] = kind
    return found


def retire(dest: Path, keep: Path | None, log: Log) -> None:
    """Remove `dest`'s folders other than `keep` that no process uses, with their lock files,
    and lock files whose folder is gone (a plain `dest` folder in use cannot be replaced:
    that raises). Call it under the install lock."""
    if not dest.is_symlink() and dest.is_dir():
        if dest != keep:
            fd = _unused(dest)
            if fd is None:
                raise WeightsError(
                    f"cannot reinstall weights into {dest}: another process is using the folder "
                    "(installed by an older version); stop it and retry"
                )
            _remove_locked(dest, fd)
    elif _readers(dest).exists():  # the lock of a plain folder that was replaced or deleted
        fd = _unused(dest)
        if fd is not None:
            _unlink_lock(_readers(dest), fd)
    for old, kind in sorted(_leftovers(dest).items()):
        if old == keep:
            continue
        if kind == "link":  # commit's new symlink, left by a crash before the swap
            remove(old)
            continue
        fd = _unused(old)
        if fd is None:
            if old.is_dir() and kind == "version":
                log(f"weights: keeping {old}: another process still uses it")
            elif old.is_dir():
                log(f"weights: keeping {old}: another process is still writing it")
            continue
        _remove_locked(old, fd)


def _remove_locked(folder: Path, fd: int) -> None:
    """Remove `folder`, then the files beside it, the readers' lock (held in `fd`) last."""
    try:
        remove(folder)
        folder.with_name(folder.name + ".pget.pid").unlink(missing_ok=True)
    except BaseException:
        os.close(fd)
        raise
    _unlink_lock(_readers(folder), fd)


def _unlink_lock(lock: Path, fd: int) -> None:
    """Unlink the lock file `lock`, which `fd` holds exclusively, then let go of it."""
    try:
        lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


def commit(tmp: Path, dest: Path) -> Path:
    """Move the finished `tmp` to a new version folder and point `dest` at it atomically; this
    process's hold on `tmp` becomes its hold on the version."""
    version = dest.with_name(f".{dest.name}.v-{os.getpid()}-{time.time_ns():x}")
    os.rename(tmp, version)
    fd = _HELD.pop(str(tmp), None)
    if fd is not None:  # the lock file moves with the folder: the version is never unheld
        os.rename(_readers(tmp), _readers(version))
        _HELD[str(version)] = fd
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
