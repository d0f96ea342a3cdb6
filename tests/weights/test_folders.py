"""Version folders and their locks: real processes hold, get killed, and the next install cleans."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cogvx.weights import folders
from cogvx.weights.install import install_weights
from cogvx.weights.pack import pack_folder
from tests.support.weights_server import WeightsServer

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))

HOLDER = """import sys
from cogvx.weights import install_weights
print(install_weights(sys.argv[1], sys.argv[2], use_pget=False, log=lambda _: None), flush=True)
sys.stdin.readline()
"""

LOCKER = """import fcntl, os, sys
for path in sys.argv[1:]:
    fcntl.flock(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), fcntl.LOCK_SH)
print("held", flush=True)
sys.stdin.readline()
"""

INSTALLER = """import sys
from cogvx.weights import install_weights
install_weights(sys.argv[1], sys.argv[2], connections=4, chunk_size=262144, use_pget=False)
"""


def quiet(_: str) -> None:
    pass


def tarball(tmp_path: Path, name: str, size: int = 64) -> Path:
    """A packed tarball of a.bin (`size` random bytes) and b.bin, distinct per `name`."""
    src = tmp_path / f"src-{name}"
    src.mkdir()
    (src / "a.bin").write_bytes(random.Random(name).randbytes(size))
    (src / "b.bin").write_text(name)
    return pack_folder(src, tmp_path / f"{name}.tar", log=quiet)


def start(code: str, *args: object) -> subprocess.Popen:
    """A Python child in its own process group (killed as a group, its tar included)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )


def first_line(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, proc.communicate(timeout=30)[0]
    return line


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def entries(dest: Path) -> set[str]:
    """What sits next to `dest` for it: its hidden entries (the lock and dest itself aside)."""
    return {p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}.")}


def with_readers(*folders_: Path) -> set[str]:
    return {name for f in folders_ for name in (f.name, f.name + ".readers")}


def test_what_killed_processes_left_goes_at_the_next_install(tmp_path):
    """A reader of an old version and an installer half-way through its download are killed
    (SIGKILL); a lock file of a removed version and a link of a crashed commit are left too:
    the next install that finds its version removes all of it, and keeps the current one."""
    v1, v2 = tarball(tmp_path, "v1"), tarball(tmp_path, "v2")
    v3 = tarball(tmp_path, "v3", size=3 << 20)
    dest = tmp_path / "w"
    reader = start(HOLDER, v1, dest)
    old = Path(first_line(reader))
    now = install_weights(v2, dest, log=quiet)  # this process holds v2: the installer keeps it
    hang = lambda at: at >= 2 << 20  # noqa: E731 (tar writes once it has 1 MiB records)
    with WeightsServer({"/v3.tar": v3.read_bytes()}, hang=hang, hang_s=60) as srv:
        installer = start(INSTALLER, srv.url("/v3.tar"), dest)
        deadline = time.monotonic() + 60
        while not any(p.is_file() for p in tmp_path.glob(".w.partial-*/*")):
            assert time.monotonic() < deadline and installer.poll() is None
            time.sleep(0.02)
        kill(installer)
    kill(reader)
    (tmp_path / ".w.v-1-abc.readers").touch()  # a crash between a folder's removal and its lock's
    (tmp_path / ".w.link-12345").symlink_to(now.name)  # a crash inside commit
    partial = [p for p in tmp_path.glob(".w.partial-*") if p.is_dir()]
    assert len(partial) == 1 and old.is_dir()
    left = {old.name, partial[0].name, ".w.v-1-abc.readers", ".w.link-12345"}
    assert left <= entries(dest)

    logs: list[str] = []
    assert install_weights(v2, dest, log=logs.append) == now
    assert any("skipping download" in line for line in logs)
    assert entries(dest) == with_readers(now)
    assert (dest / "b.bin").read_text() == "v2"
    folders.release(dest)


def test_folders_and_locks_that_live_processes_hold_survive(tmp_path):
    """A live reader of an old version, a live writer of a temporary folder and a live holder
    of a lock whose folder was deleted by hand keep what they hold through a reinstall; once
    they are killed, the next install removes it."""
    v1, v2, v3 = (tarball(tmp_path, v) for v in ("v1", "v2", "v3"))
    dest = tmp_path / "w"
    reader = start(HOLDER, v1, dest)
    old = Path(first_line(reader))
    unused = install_weights(v2, dest, log=quiet)
    temp = tmp_path / ".w.partial-7-1f"  # a live installer's (or its pget's) temporary folder
    (temp / "sub").mkdir(parents=True)
    (temp / "sub" / "part.bin").write_bytes(b"half")
    orphan = tmp_path / ".w.v-8-2e.readers"  # its folder was deleted while a process uses it
    locker = start(LOCKER, temp.with_name(temp.name + ".readers"), orphan)
    assert first_line(locker) == "held"

    logs: list[str] = []
    new = install_weights(v3, dest, log=logs.append)  # releases v2, which nobody else holds
    assert any(f"keeping {old}: another process still uses it" in line for line in logs)
    assert any(f"keeping {temp}: another process is still writing it" in line for line in logs)
    assert not unused.exists()
    assert entries(dest) == with_readers(old, temp, new) | {orphan.name}
    assert (temp / "sub" / "part.bin").read_bytes() == b"half"
    assert reader.stdin is not None
    reader.stdin.write("go\n")  # the reader still sees its files
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0, out
    assert (old / "b.bin").read_text() == "v1"

    kill(locker)
    assert install_weights(v3, dest, log=quiet) == new  # the reader exited, the locker was killed
    assert entries(dest) == with_readers(new)
    folders.release(dest)


def inject_before_flock(monkeypatch: pytest.MonkeyPatch, path: Path, action) -> None:
    """Run `action()` once, right before the first flock of the file at `path`: the moment
    another process may act in (the window between open and flock)."""
    real = fcntl.flock
    target = os.stat(path) if path.exists() else None
    done: list[bool] = []

    def flock(fd: int, how: int) -> None:
        if not done and (target is None or os.path.samestat(os.fstat(fd), target)):
            done.append(True)
            action()
        real(fd, how)

    monkeypatch.setattr(fcntl, "flock", flock)


def free_for_others(path: Path) -> bool:
    """True when another process can take `path`'s lock exclusively (or the file is gone)."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], timeout=30)
    assert done.returncode in (0, 3)
    return done.returncode == 0


def test_a_reader_whose_lock_file_was_unlinked_before_its_flock_locks_the_new_one(
    tmp_path, monkeypatch
):
    """Between the reader's open and flock a remover unlinks the lock file: the reader must
    not end up holding the unlinked file (no other process could see that lock)."""
    dest = tmp_path / "w"
    version = tmp_path / ".w.v-1-a"
    version.mkdir()
    lock = tmp_path / ".w.v-1-a.readers"
    lock.touch()
    inject_before_flock(monkeypatch, lock, lock.unlink)
    folders.hold(dest, version)
    monkeypatch.undo()
    try:
        assert lock.exists()
        assert not free_for_others(lock)
    finally:
        folders.release(dest)
    assert free_for_others(lock)


def test_a_remover_never_unlinks_the_lock_file_a_reader_just_took(tmp_path, monkeypatch):
    """Between the remover's open and flock, the file it opened is replaced by another one that
    a reader now holds: the remover must see the reader's lock and keep the folder."""
    dest = tmp_path / "w"
    now, old = tmp_path / ".w.v-2-b", tmp_path / ".w.v-1-a"
    now.mkdir()
    old.mkdir()
    dest.symlink_to(now.name)
    lock = tmp_path / ".w.v-1-a.readers"
    lock.touch()
    reader: list[int] = []

    def replace_and_hold() -> None:
        lock.unlink()
        reader.append(os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
        real_flock(reader[0], fcntl.LOCK_SH)

    real_flock = fcntl.flock
    inject_before_flock(monkeypatch, lock, replace_and_hold)
    logs: list[str] = []
    try:
        folders.retire(dest, now, logs.append)
        monkeypatch.undo()
        assert old.is_dir() and os.path.samestat(os.stat(lock), os.fstat(reader[0]))
        assert logs == [f"weights: keeping {old}: another process still uses it"]
    finally:
        for fd in reader:
            os.close(fd)
    folders.retire(dest, now, quiet)
    assert entries(dest) == {now.name}


SLOW_PGET = """#!{python}
import os, sys, time
dest = [a for a in sys.argv[1:] if not a.startswith("-")][-1]
os.makedirs(os.path.join(dest, "sub"))
with open(os.path.join(dest, "sub", ".part.tmp"), "wb") as f:
    f.write(b"half")
os.rename(f.name, os.path.join(dest, "sub", "part.bin"))  # the test waits for it: whole at once
while not os.path.exists(os.environ["SLOW_PGET_GO"]):
    time.sleep(0.02)
"""


def test_a_pget_that_outlives_its_killed_installer_keeps_its_folder(tmp_path, monkeypatch):
    """pget inherits the temporary folder's lock: the installer is killed (SIGKILL, pget
    lives on), and the next install leaves the folder pget still writes alone."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pget").write_text(SLOW_PGET.format(python=sys.executable))
    (bindir / "pget").chmod(0o755)
    go = tmp_path / "go"
    env = dict(ENV, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", SLOW_PGET_GO=str(go))
    dest = tmp_path / "w"
    v1 = tarball(tmp_path, "v1")
    with WeightsServer({"/v1.tar": v1.read_bytes()}) as srv:
        installer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                INSTALLER.replace("use_pget=False", "use_pget=True"),
                srv.url("/v1.tar"),
                str(dest),
            ],
            env=env,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while not list(tmp_path.glob(".w.partial-*/sub/part.bin")):
                assert time.monotonic() < deadline and installer.poll() is None
                time.sleep(0.02)
            os.kill(installer.pid, signal.SIGKILL)  # the installer only: pget keeps running
            installer.wait(timeout=30)
            (partial,) = (p for p in tmp_path.glob(".w.partial-*") if p.is_dir())
            logs: list[str] = []
            assert install_weights(v1, dest, log=logs.append) == folders.current(dest)
            assert (partial / "sub" / "part.bin").read_bytes() == b"half"
            assert f"weights: keeping {partial}: another process is still writing it" in logs
        finally:
            go.touch()  # pget finishes; its group is reaped below
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.killpg(installer.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
    folders.release(dest)
    install_weights(v1, dest, log=quiet)  # nobody holds the partial folder now: it goes
    assert not partial.exists()
    folders.release(dest)
