"""Weight tarball fetcher: real loopback HTTP servers, real GNU tar, real files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cogvx.errors import WeightsError
from cogvx.net import http as net_http
from cogvx.net.chunks import plan_spans
from cogvx.weights.install import install_weights
from cogvx.weights.pack import pack_folder
from cogvx.weights.tarcheck import MANIFEST_NAME, MARKER_NAME
from tests.support.weights_server import WeightsServer

REPO = Path(__file__).resolve().parents[2]
CHUNK = 256 << 10


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A small multi-chunk folder, its tarball (via pack_folder) and the tarball's bytes."""
    root = tmp_path_factory.mktemp("packed")
    src = root / "src"
    (src / "transformer").mkdir(parents=True)
    (src / "vae").mkdir()
    rng = __import__("random").Random(0)
    (src / "transformer" / "model.safetensors").write_bytes(rng.randbytes(1_700_000))
    (src / "vae" / "diffusion_pytorch_model.bin").write_bytes(rng.randbytes(300_001))
    (src / "model_index.json").write_text('{"_class_name": "CogVideoXPipeline"}')
    (src / "vae" / ("long_name_" * 14 + ".json")).write_text("{}")  # > 100 chars: pax header
    (src / "empty.txt").write_bytes(b"")
    tar = pack_folder(src, root / "weights.tar", log=lambda _: None)
    return src, tar, tar.read_bytes()


def spans(data: bytes) -> list[tuple[int, int]]:
    """The ranges `fetch` asks for (4 connections)."""
    return plan_spans(len(data), CHUNK, 4)


def n_chunks(data: bytes) -> int:
    return len(spans(data))


def same_tree(a: Path, b: Path) -> None:
    """Every file under a exists under b with the same bytes."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel


def fetch(url: str, dest: Path, logs: list[str] | None = None, **kw: object) -> Path:
    opts: dict = {"connections": 4, "chunk_size": CHUNK, "use_pget": False}
    opts.update(kw)
    return install_weights(url, dest, log=(logs.append if logs is not None else print), **opts)


def no_leftovers(dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.partial-*"))


def test_ranges_install_verifies_marks_and_then_skips(packed, tmp_path):
    src, _, data = packed
    dest = tmp_path / "w"
    logs: list[str] = []
    with WeightsServer({"/w.tar": data}) as srv:
        out = fetch(srv.url("/w.tar?token=secret"), dest, logs)
        assert dest.is_symlink() and out == dest.resolve()  # a version folder behind dest
        assert srv.count("/w.tar") == n_chunks(data)  # each range exactly once
        assert all(r and r.startswith("bytes=") for _, r in srv.requests)
        same_tree(src, dest)
        marker = json.loads((dest / MARKER_NAME).read_text())
        assert marker["sha256_verified"] is True
        assert marker["source"] == srv.url("/w.tar")
        assert marker["files"]["transformer/model.safetensors"] == 1_700_000
        assert any("MB/s" in line and "%" in line for line in logs)
        assert "sha256 verified" in logs[-1] and "installed" in logs[-1]
        assert not any("secret" in line for line in logs)

        logs.clear()
        assert fetch(srv.url("/w.tar?token=other"), dest, logs) == out
        assert srv.count("/w.tar") == n_chunks(data)  # no request at all
        assert "skipping download" in logs[-1]


def test_server_ignoring_ranges_is_streamed(packed, tmp_path):
    src, _, data = packed
    with WeightsServer({"/w.tar": data}, ranges=False) as srv:
        logs: list[str] = []
        fetch(srv.url("/w.tar"), tmp_path / "w", logs)
        assert srv.count("/w.tar") == 1
        assert any("ignores Range" in line for line in logs)
    same_tree(src, tmp_path / "w")
    assert json.loads((tmp_path / "w" / MARKER_NAME).read_text())["sha256_verified"]


def test_a_content_length_that_is_not_a_number_is_streamed_to_the_end(packed, tmp_path):
    src, _, data = packed  # "²".isdigit() is True, int("²") raises
    with WeightsServer(
        {"/w.tar": data}, ranges=False, no_length=True, headers={"Content-Length": "²"}
    ) as srv:
        fetch(srv.url("/w.tar"), tmp_path / "w", [])
    same_tree(src, tmp_path / "w")


def test_dropped_connections_resume_their_chunk(packed, tmp_path):
    src, _, data = packed
    starts = [start for start, _ in spans(data)]
    with WeightsServer({"/w.tar": data}, drop=set(starts[::2]).__contains__) as srv:
        fetch(srv.url("/w.tar"), tmp_path / "w")
        assert srv.dropped == len(starts[::2])
        resumed = [r for _, r in srv.requests if int(r[6:].split("-")[0]) not in starts]
        assert len(resumed) == srv.dropped  # each dropped chunk resumed from its last byte
    same_tree(src, tmp_path / "w")


def test_stalled_connection_times_out_and_resumes(packed, tmp_path):
    src, _, data = packed
    starts = [start for start, _ in spans(data)]
    hung = [spans(data)[0], spans(data)[3]]  # the first answer (chunk 0) and a later one
    hang = {start for start, _ in hung}.__contains__
    # The client gives up on a silent connection after 1 s, long before the server's 10 s of
    # silence end. Under load a healthy chunk may also stall past 1 s and be resumed, so extra
    # resumes are allowed; the two hung chunks' resumes must be there.
    with WeightsServer({"/w.tar": data}, hang=hang, hang_s=10.0) as srv:
        fetch(srv.url("/w.tar"), tmp_path / "w", stall_timeout=1.0)
        assert srv.hung == 2
        resumed = [int(r[6:].split("-")[0]) for _, r in srv.requests]
        resumed = [start for start in resumed if start not in starts]
        assert len(resumed) >= 2
        # each hung chunk resumed from the byte where the server went silent (half-way)
        assert {start + length // 2 for start, length in hung} <= set(resumed)
    same_tree(src, tmp_path / "w")


@pytest.mark.parametrize("quirk", [{"max_answer": 100_000}, {"open_ended": True}])
def test_short_and_overlong_range_answers(packed, tmp_path, quirk):
    src, _, data = packed
    with WeightsServer({"/w.tar": data}, **quirk) as srv:
        fetch(srv.url("/w.tar"), tmp_path / "w")
        if "max_answer" in quirk:  # every span longer than an answer needs more requests
            extra = sum(-(-length // 100_000) - 1 for _, length in spans(data))
            assert srv.count("/w.tar") == n_chunks(data) + extra
    same_tree(src, tmp_path / "w")


def test_redirect_is_followed_without_leaking_signatures(packed, tmp_path):
    _, _, data = packed
    logs: list[str] = []
    with WeightsServer({"/w.tar": data}) as srv:
        srv.redirects["/signed"] = srv.url("/w.tar?X-Amz-Signature=secret")
        fetch(srv.url("/signed?sig=secret"), tmp_path / "w", logs)
        assert srv.count("/w.tar") == n_chunks(data)
    assert any("redirected to" in line for line in logs)
    assert not any("secret" in line for line in logs)


@pytest.mark.parametrize(
    ("path", "words"),
    [("/missing.tar", "not found (HTTP 404"), ("/forbidden.tar", "forbidden")],
)
def test_http_errors_name_the_url_without_query(tmp_path, path, words):
    with WeightsServer({}, statuses={"/forbidden.tar": 403}) as srv:
        with pytest.raises(WeightsError) as err:
            fetch(srv.url(f"{path}?token=secret"), tmp_path / "w")
    msg = str(err.value)
    assert words in msg and srv.url(path) in msg and "secret" not in msg
    no_leftovers(tmp_path / "w")


def test_not_a_tar(tmp_path):
    page = b"<!doctype html><html><body>" + b"x" * 2000 + b"</body></html>"
    with WeightsServer({"/page.html": page}) as srv:
        with pytest.raises(WeightsError, match="is not a tar archive"):
            fetch(srv.url("/page.html"), tmp_path / "w")
    no_leftovers(tmp_path / "w")


def test_too_little_disk(packed, tmp_path, monkeypatch):
    _, _, data = packed
    monkeypatch.setenv("COGVX_FAKE_FREE_BYTES", "1000")
    with WeightsServer({"/w.tar": data}) as srv:
        with pytest.raises(WeightsError) as err:
            fetch(srv.url("/w.tar?token=secret"), tmp_path / "w")
    msg = str(err.value)
    assert "GB needed, 0.00 GB free" in msg and srv.url("/w.tar") in msg
    assert "secret" not in msg
    no_leftovers(tmp_path / "w")


def test_flipped_byte_fails_sha256_naming_the_file(packed, tmp_path):
    _, tar, data = packed
    with tarfile.open(tar) as tf:
        at = tf.getmember("transformer/model.safetensors").offset_data + 123_456
    bad = bytearray(data)
    bad[at] ^= 0xFF
    with WeightsServer({"/w.tar": bytes(bad)}) as srv:
        with pytest.raises(
            WeightsError, match=r"sha256 mismatch for transformer/model\.safetensors"
        ):
            fetch(srv.url("/w.tar"), tmp_path / "w")
    no_leftovers(tmp_path / "w")


@pytest.mark.parametrize("ranges", [True, False])
def test_truncated_tarball(packed, tmp_path, ranges):
    _, _, data = packed
    with WeightsServer({"/w.tar": data[: len(data) * 6 // 10]}, ranges=ranges) as srv:
        with pytest.raises(WeightsError, match="is truncated"):
            fetch(srv.url("/w.tar"), tmp_path / "w")
    no_leftovers(tmp_path / "w")


@pytest.mark.parametrize("ranges", [True, False])
def test_server_sending_less_than_content_length(packed, tmp_path, monkeypatch, ranges):
    _, _, data = packed
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    with WeightsServer({"/w.tar": data}, ranges=ranges, short_by=1000) as srv:
        with pytest.raises(WeightsError) as err:
            fetch(srv.url("/w.tar"), tmp_path / "w")
    if ranges:
        assert "failed at bytes" in str(err.value) and "after 6 attempts" in str(err.value)
    else:
        assert f"truncated: received {len(data) - 1000} of {len(data)} bytes" in str(err.value)
    no_leftovers(tmp_path / "w")


def test_two_processes_race_one_downloads(packed, tmp_path):
    _, _, data = packed
    dest = tmp_path / "w"
    code = (
        "import sys; from cogvx.weights import install_weights; "
        "install_weights(sys.argv[1], sys.argv[2], connections=4, chunk_size=262144, "
        "use_pget=False)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with WeightsServer({"/w.tar": data}) as srv:
        srv.gate.clear()  # hold the first process inside its download

        def start() -> subprocess.Popen:
            cmd = [sys.executable, "-u", "-c", code, srv.url("/w.tar"), str(dest)]
            return subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )

        first = start()
        deadline = time.monotonic() + 30
        while srv.count("/w.tar") == 0:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        second = start()
        seen = []
        for line in second.stdout:
            seen.append(line)
            if "waiting for another process" in line:
                break
        srv.gate.set()
        out_first, _ = first.communicate(timeout=60)
        out_second = "".join(seen) + second.communicate(timeout=60)[0]
        assert first.returncode == 0 and second.returncode == 0, out_first + out_second
        assert "installed" in out_first
        assert "waiting for another process" in out_second
        assert "skipping download" in out_second
        assert srv.count("/w.tar") == n_chunks(data)  # one download in all
    assert json.loads((dest / MARKER_NAME).read_text())["sha256_verified"]


def test_half_installed_dest_is_repaired(packed, tmp_path):
    src, _, data = packed
    dest = tmp_path / "w"
    dest.mkdir()
    (dest / "junk.bin").write_bytes(b"left over from a killed install")
    (tmp_path / ".w.partial-99999").mkdir()  # a crashed process's temp folder
    logs: list[str] = []
    with WeightsServer({"/w.tar": data}) as srv:
        fetch(srv.url("/w.tar"), dest, logs)
        assert any("half-installed" in line for line in logs)
        assert not (dest / "junk.bin").exists()
        same_tree(src, dest)
        (dest / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"short")
        logs.clear()
        fetch(srv.url("/w.tar"), dest, logs)
        assert srv.count("/w.tar") == 2 * n_chunks(data)
        assert any("expected 300001; reinstalling" in line for line in logs)
    same_tree(src, dest)
    no_leftovers(tmp_path / "not-there")
    assert not (tmp_path / ".w.partial-99999").exists()


def evil_tar(path: Path, kind: str, outside: Path) -> None:
    """A tarball with one dangerous member, as an attacker would build it."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:

        def add(info: tarfile.TarInfo, data: bytes = b"") -> None:
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        add(tarfile.TarInfo("ok.txt"), b"fine")
        if kind == "absolute":
            add(tarfile.TarInfo(str(outside / "evil")), b"pwned")
        elif kind == "dotdot":
            add(tarfile.TarInfo("sub/../../outside/evil"), b"pwned")
        elif kind in ("symlink_abs", "symlink_rel"):
            link = tarfile.TarInfo("link")
            link.type = tarfile.SYMTYPE
            link.linkname = str(outside) if kind == "symlink_abs" else "../outside"
            add(link)
            add(tarfile.TarInfo("link/evil"), b"pwned")
        elif kind == "below_link":
            link = tarfile.TarInfo("d")
            link.type = tarfile.SYMTYPE
            link.linkname = "sub"
            add(link)
            add(tarfile.TarInfo("d/evil"), b"pwned")
        elif kind == "hardlink":
            hard = tarfile.TarInfo("hl")
            hard.type = tarfile.LNKTYPE
            hard.linkname = "../outside/victim"
            add(hard)
        elif kind == "device":
            dev = tarfile.TarInfo("dev")
            dev.type = tarfile.CHRTYPE
            dev.devmajor, dev.devminor = 1, 3
            add(dev)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("absolute", "absolute path"),
        ("dotdot", "'..' in path"),
        ("symlink_abs", "points outside"),
        ("symlink_rel", "points outside"),
        ("below_link", "below a symbolic link"),
        ("hardlink", "'..' in path"),
        ("device", "device files"),
    ],
)
def test_malicious_members_are_refused(tmp_path, kind, why):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    tar = tmp_path / "evil.tar"
    evil_tar(tar, kind, outside)
    with pytest.raises(WeightsError, match="refusing tar member") as err:
        install_weights(tar, tmp_path / "w", log=lambda _: None)
    assert why in str(err.value)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original"
    no_leftovers(tmp_path / "w")


def test_local_tar_and_folder_sources(packed, tmp_path):
    src, tar, _ = packed
    out = install_weights(tar, tmp_path / "w", chunk_size=CHUNK, log=lambda _: None)
    same_tree(src, out)
    assert install_weights(src, tmp_path / "unused") == src
    assert not (tmp_path / "unused").exists()
    with pytest.raises(WeightsError, match="does not exist"):
        install_weights(tmp_path / "nope", tmp_path / "w2")
    with pytest.raises(ValueError, match="connections"):
        install_weights(tar, tmp_path / "w3", connections=0)


FAKE_PGET = """#!{python}
import io, json, os, sys, tarfile, urllib.request
args = sys.argv[1:]
with open(os.environ["FAKE_PGET_ARGS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
rest, skip = [], False
for a in args:
    if skip:
        skip = False
    elif a == "--pid-file":
        skip = True
    elif not a.startswith("-"):
        rest.append(a)
url, dest = rest
assert "-x" in args and not os.path.exists(dest)
print("fake pget: downloading " + url, flush=True)
data = urllib.request.urlopen(url).read()
os.makedirs(dest)
kw = {{"filter": "data"}} if hasattr(tarfile, "data_filter") else {{}}  # Python >= 3.11.4
tarfile.open(fileobj=io.BytesIO(data)).extractall(dest, **kw)
mode = os.environ.get("FAKE_PGET_MODE", "")
if mode == "corrupt":
    p = os.path.join(dest, "transformer", "model.safetensors")
    b = bytearray(open(p, "rb").read()); b[10] ^= 1; open(p, "wb").write(bytes(b))
elif mode == "escape":
    os.symlink("/etc", os.path.join(dest, "etc"))
"""


def put_fake_pget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str = "") -> Path:
    """FAKE_PGET as `pget` on PATH; returns the file it appends its arguments to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pget = bindir / "pget"
    pget.write_text(FAKE_PGET.format(python=sys.executable))
    pget.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PGET_ARGS", str(tmp_path / "args.jsonl"))
    monkeypatch.setenv("FAKE_PGET_MODE", mode)
    return tmp_path / "args.jsonl"


@pytest.mark.parametrize("mode", ["", "corrupt", "escape"])
def test_pget_on_path_is_used_then_verified(packed, tmp_path, monkeypatch, mode):
    src, _, data = packed
    put_fake_pget(tmp_path, monkeypatch, mode)
    dest = tmp_path / "w"
    logs: list[str] = []
    with WeightsServer({"/w.tar": data}) as srv:
        url = srv.url("/w.tar?token=secret")
        if mode == "corrupt":
            with pytest.raises(WeightsError, match="sha256 mismatch for transformer/model"):
                install_weights(url, dest, log=logs.append)
        elif mode == "escape":
            with pytest.raises(WeightsError, match="points outside"):
                install_weights(url, dest, log=logs.append)
        else:
            install_weights(url, dest, log=logs.append)
    args = json.loads((tmp_path / "args.jsonl").read_text().splitlines()[0])
    assert args[0] == "-x" and "--pid-file" in args and url in args
    assert any(line.startswith("pget: fake pget: downloading") for line in logs)
    assert not any("secret" in line for line in logs)
    if mode:
        no_leftovers(dest)
    else:
        same_tree(src, dest)
        assert json.loads((dest / MARKER_NAME).read_text())["sha256_verified"]


def test_pget_is_not_started_without_room_for_the_tarball(packed, tmp_path, monkeypatch):
    """The size comes from a one-byte range request, so the refusal comes before pget runs."""
    _, _, data = packed
    ran = put_fake_pget(tmp_path, monkeypatch)
    monkeypatch.setenv("COGVX_FAKE_FREE_BYTES", "1000")
    with WeightsServer({"/w.tar": data}) as srv:
        with pytest.raises(WeightsError) as err:
            install_weights(srv.url("/w.tar?token=secret"), tmp_path / "w", log=print)
    msg = str(err.value)
    assert "GB needed, 0.00 GB free" in msg and srv.url("/w.tar") in msg, msg
    assert "secret" not in msg
    assert not ran.exists()  # the fake pget never started
    no_leftovers(tmp_path / "w")


def test_pget_of_a_tarball_of_unknown_size_is_checked_after_it_ran(packed, tmp_path, monkeypatch):
    _, _, data = packed
    ran = put_fake_pget(tmp_path, monkeypatch)
    monkeypatch.setenv("COGVX_FAKE_FREE_BYTES", str(10 << 20))
    logs: list[str] = []
    with WeightsServer({"/w.tar": data}, no_length=True) as srv:  # no size, no ranges
        with pytest.raises(WeightsError, match=r"stopped after 2 MB with 10 MB free \(64 MB"):
            install_weights(srv.url("/w.tar"), tmp_path / "w", log=logs.append)
    assert ran.exists()
    no_leftovers(tmp_path / "w")


def test_pack_folder_manifest_first_sorted_links_dereferenced(tmp_path):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    (src / "b" / "z.bin").write_bytes(b"zz")
    (src / "a.txt").write_text("hello")
    (tmp_path / "blob").write_bytes(b"blob-bytes")
    (src / "b" / "link.bin").symlink_to(tmp_path / "blob")  # like a Hugging Face snapshot
    (src / MARKER_NAME).write_text("{}")  # an installed folder can be re-packed
    tar = pack_folder(src, tmp_path / "out" / "w.tar", log=lambda _: None)
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == [MANIFEST_NAME, "a.txt", "b/link.bin", "b/z.bin"]
        assert all(m.isreg() for m in members)
        manifest = json.load(tf.extractfile(MANIFEST_NAME))
    assert manifest["format"] == 1
    assert manifest["files"]["b/link.bin"] == {
        "size": 10,
        "sha256": hashlib.sha256(b"blob-bytes").hexdigest(),
    }
    assert sorted(manifest["files"]) == names[1:]


def test_pack_folder_is_byte_reproducible(tmp_path, monkeypatch):
    """Same names, contents and modes -> the same tarball bytes, whatever the files' times and
    the clock; SOURCE_DATE_EPOCH sets every member's mtime."""

    def make(where: Path, mtime: int) -> Path:
        (where / "vae").mkdir(parents=True)
        (where / "vae" / "w.bin").write_bytes(b"\x01" * 3000)
        (where / "run.sh").write_text("#!/bin/sh\n")
        (where / "run.sh").chmod(0o755)
        for f in (where / "vae" / "w.bin", where / "run.sh"):
            os.utime(f, (mtime, mtime))
        return where

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    first = pack_folder(make(tmp_path / "a", 1_600_000_000), tmp_path / "a.tar", log=print)
    time.sleep(1.1)  # a later clock second too
    second = pack_folder(make(tmp_path / "b", 1_700_000_000), tmp_path / "b.tar", log=print)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tf:
        assert {m.mtime for m in tf.getmembers()} == {0}
        assert tf.getmember("run.sh").mode == 0o755
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    third = pack_folder(tmp_path / "a", tmp_path / "c.tar", log=print)
    with tarfile.open(third) as tf:
        assert {m.mtime for m in tf.getmembers()} == {1767225600}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ValueError, match="SOURCE_DATE_EPOCH='yesterday'"):
        pack_folder(tmp_path / "a", tmp_path / "d.tar", log=print)


def test_pack_weights_cli(packed, tmp_path):
    src, _, _ = packed
    out = tmp_path / "cli.tar"
    cmd = [sys.executable, str(REPO / "tools" / "pack_weights.py"), str(src), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "5 files" in res.stdout and "COG_WEIGHTS=" in res.stdout
    assert install_weights(out, tmp_path / "w", log=lambda _: None).is_dir()
    same_tree(src, tmp_path / "w")


MODES = {  # member -> (mode in the tarball, mode tarfile's data filter leaves)
    "suid.bin": (0o4755, 0o755),
    "open.bin": (0o777, 0o755),
    "rw-all.txt": (0o666, 0o644),
    "sub/sgid.bin": (0o2775, 0o755),
    "group-x.txt": (0o670, 0o640),  # x for group only: dropped like the data filter does
    "plain.txt": (0o644, 0o644),
}


def moded_tar(path: Path) -> Path:
    """A tarball holding a setuid, a setgid, a 0777 and a 0666 file and a sticky 1777 folder."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        sub = tarfile.TarInfo("sub")
        sub.type, sub.mode = tarfile.DIRTYPE, 0o1777
        tf.addfile(sub)
        for name, (mode, _) in MODES.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = 4, mode, 4321, 4321
            tf.addfile(info, io.BytesIO(b"data"))
    return path


@pytest.mark.parametrize("source", ["http", "local"])
@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_setuid_and_world_writable_modes_are_filtered(tmp_path, source, umask):
    tar = moded_tar(tmp_path / "moded.tar")
    old = os.umask(umask)  # umask 0: tar alone would keep 0777 and the sticky bit
    try:
        if source == "local":
            dest = install_weights(tar, tmp_path / "w", log=lambda _: None)
        else:
            with WeightsServer({"/m.tar": tar.read_bytes()}) as srv:
                dest = fetch(srv.url("/m.tar"), tmp_path / "w", logs=[])
    finally:
        os.umask(old)
    got = {name: (dest / name).stat().st_mode & 0o7777 for name in MODES}
    assert got == {name: want for name, (_, want) in MODES.items()}
    assert (dest / "sub").stat().st_mode & 0o7777 == 0o755
    assert dest.stat().st_mode & 0o7777 == 0o755
    assert {(dest / n).stat().st_uid for n in MODES} == {os.getuid()}  # no owner kept


@pytest.mark.parametrize("ranges", [True, False])
def test_a_stall_says_no_data_for_n_seconds(packed, tmp_path, monkeypatch, ranges):
    _, _, data = packed
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    with WeightsServer({"/w.tar": data}, ranges=ranges, hang=lambda _: True, hang_s=5) as srv:
        url = srv.url("/w.tar")
        with pytest.raises(WeightsError) as err:
            fetch(url + "?token=secret", tmp_path / "w", stall_timeout=0.3)
    msg = str(err.value)
    assert f"no data for 0.3 s from {url}" in msg and "Errno" not in msg, msg
    assert ("after 6 attempts" in msg) == ranges
    no_leftovers(tmp_path / "w")


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/w.tar", "gopher://x"])
def test_a_redirect_off_http_is_refused_at_once(tmp_path, location):
    with WeightsServer({}, redirects={"/w.tar": location}) as srv:
        with pytest.raises(WeightsError, match="redirect to .*: only http:// and https://"):
            fetch(srv.url("/w.tar"), tmp_path / "w")
        assert srv.count("/w.tar") == 1  # one request: refused, not retried
    no_leftovers(tmp_path / "w")


def test_a_malformed_redirect_is_a_clean_error(tmp_path):
    location = "http://[::1/x" + "y" * 5000  # urljoin raises ValueError("Invalid IPv6 URL")
    with WeightsServer({}, redirects={"/w.tar": location}) as srv:
        with pytest.raises(WeightsError, match=r"redirect to http://\[::1/x.*is malformed") as err:
            fetch(srv.url("/w.tar"), tmp_path / "w")
        assert srv.count("/w.tar") == 1  # refused at once, not retried
    assert len(str(err.value)) < 600  # the long Location is clipped
    no_leftovers(tmp_path / "w")


def test_a_global_pax_header_is_refused(tmp_path):
    """tar applies a global header's path/linkpath to later members; the checker would not."""
    tar = tmp_path / "global.tar"
    evil = {"path": "sub/evil.txt", "linkpath": "/etc"}
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT, pax_headers=evil) as tf:
        link = tarfile.TarInfo("ok")
        link.type = tarfile.SYMTYPE
        link.linkname = "ok-target"
        tf.addfile(link)
    with pytest.raises(
        WeightsError, match=r"global\.tar: refusing the global pax header at byte 0"
    ):
        install_weights(tar, tmp_path / "w", log=lambda _: None)
    no_leftovers(tmp_path / "w")


def test_without_content_length_the_manifest_and_the_floor_guard_the_disk(
    packed, tmp_path, monkeypatch
):
    src, _, data = packed
    bare = tmp_path / "bare.tar"  # no manifest: only the free-space floor can stop it
    with tarfile.open(bare, "w") as tf:
        tf.add(src / "transformer" / "model.safetensors", "model.safetensors")
    with WeightsServer({"/w.tar": data, "/bare.tar": bare.read_bytes()}, no_length=True) as srv:
        fetch(srv.url("/w.tar"), tmp_path / "ok")  # plenty of room: installs and verifies
        same_tree(src, tmp_path / "ok")
        monkeypatch.setenv("COGVX_FAKE_FREE_BYTES", str(50 << 20))
        with pytest.raises(WeightsError, match=r"GB needed, 0\.05 GB free"):
            fetch(srv.url("/w.tar"), tmp_path / "w")  # the manifest's sizes, before extracting
        with pytest.raises(WeightsError, match=r"stopped after \d+ MB with 52 MB free"):
            fetch(srv.url("/bare.tar"), tmp_path / "w")
    no_leftovers(tmp_path / "w")


def test_rebuilt_local_tarball_is_reinstalled(tmp_path):
    from cogvx.weights import install_weights
    from cogvx.weights.pack import pack_folder

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"v1")
    tar = tmp_path / "w.tar"
    pack_folder(src, tar, log=lambda _: None)
    dest = tmp_path / "w"
    install_weights(tar, dest, log=lambda _: None)
    (src / "a.bin").write_bytes(b"v2")
    (src / "extra.json").write_text("{}")
    pack_folder(src, tar, log=lambda _: None)
    os.utime(tar, ns=(1, 1))  # another version, whatever the clock's resolution
    logs: list[str] = []
    install_weights(tar, dest, log=logs.append)
    assert (dest / "a.bin").read_bytes() == b"v2" and (dest / "extra.json").is_file()
    assert any("another version" in line for line in logs)


def test_manifest_that_is_not_the_first_member_is_still_checked(tmp_path):
    from cogvx.errors import WeightsError
    from cogvx.weights import install_weights

    manifest = {
        "format": 1,
        "files": {"a.bin": {"size": 4, "sha256": hashlib.sha256(b"good").hexdigest()}},
    }
    tar = tmp_path / "w.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in (("a.bin", b"evil"), (MANIFEST_NAME, json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(WeightsError, match="sha256 mismatch for a.bin"):
        install_weights(tar, tmp_path / "w", log=lambda _: None)


def test_iter_safetensors_words_a_corrupt_file_as_a_weights_error(tmp_path):
    """safetensors raises its own SafetensorError (not OSError/ValueError) for a bad header or a
    file cut short: the caller still gets the project's error naming the file."""
    import torch
    from safetensors.torch import save_file

    from cogvx.errors import WeightsFileError
    from cogvx.weights.tensors import iter_safetensors

    good = tmp_path / "good.safetensors"
    save_file({"a": torch.zeros(4, 4)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(WeightsFileError, match=r"cut\.safetensors: cannot read safetensors"):
        list(iter_safetensors(cut))
    assert [key for key, _ in iter_safetensors(good)] == ["a"]


def test_two_packers_of_one_tarball_never_write_into_each_others_file(tmp_path, monkeypatch):
    """Packer B runs to the end while packer A is half-way (its manifest written): each writes a
    temp file of its own, so both finish and the tarball is A's (the last one), whole."""
    for name, body in (("a", b"A" * 300_000), ("b", b"B" * 200_000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(body)
    out = tmp_path / "out" / "w.tar"
    real_addfile = tarfile.TarFile.addfile
    state = {"b_done": False}

    def addfile(self, tarinfo, fileobj=None):
        if not state["b_done"] and str(tmp_path / "a") in str(getattr(fileobj, "name", "")):
            state["b_done"] = True  # A is about to write its first file: B packs meanwhile
            pack_folder(tmp_path / "b", out, log=lambda _: None)
        return real_addfile(self, tarinfo, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    pack_folder(tmp_path / "a", out, log=lambda _: None)
    monkeypatch.undo()
    assert state["b_done"]
    dest = install_weights(out, tmp_path / "dest", log=lambda _: None)
    assert (dest / "model.bin").read_bytes() == b"A" * 300_000
    assert [p.name for p in out.parent.iterdir()] == ["w.tar"]  # no temp file left


def test_a_folder_holding_its_tarball_skips_every_packers_temp_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"x" * 1000)
    (src / ".w.tar.4242.0a1b2c3d.partial").write_bytes(b"another packer's half tarball")
    pack_folder(src, src / "w.tar", log=lambda _: None)
    with tarfile.open(src / "w.tar") as tf:
        assert sorted(tf.getnames()) == [MANIFEST_NAME, "model.bin"]


def test_a_fake_free_bytes_that_is_not_a_number_names_the_variable(monkeypatch):
    from cogvx import settings

    monkeypatch.setenv("COGVX_FAKE_FREE_BYTES", "10GB")
    with pytest.raises(ValueError, match=r"COGVX_FAKE_FREE_BYTES='10GB': expected a whole number"):
        settings.fake_free_bytes()
    monkeypatch.setenv("COGVX_FAKE_FREE_BYTES", " 12345 ")
    assert settings.fake_free_bytes() == 12345


@pytest.mark.parametrize("tarball", ["plain", "packed"])
def test_tar_options_in_the_environment_do_not_reach_tar(tmp_path, monkeypatch, tarball):
    """GNU tar reads TAR_OPTIONS on every run: an --exclude there would drop weight files (a
    tarball without a manifest would install incomplete without a word)."""
    src = tmp_path / "src"
    (src / "vae").mkdir(parents=True)
    (src / "vae" / "model.bin").write_bytes(b"1" * 5000)
    (src / "config.json").write_text("{}")
    tar = tmp_path / f"{tarball}.tar"
    if tarball == "plain":  # no manifest
        with tarfile.open(tar, "w") as tf:
            tf.add(src / "config.json", "config.json")
            tf.add(src / "vae" / "model.bin", "vae/model.bin")
    else:
        pack_folder(src, tar, log=lambda _: None)
    monkeypatch.setenv("TAR_OPTIONS", "--exclude=*.bin")
    monkeypatch.setenv("POSIXLY_CORRECT", "1")
    dest = install_weights(tar, tmp_path / "dest", log=lambda _: None)
    assert (dest / "vae" / "model.bin").read_bytes() == b"1" * 5000


READER = """import sys
from cogvx.weights import install_weights
folder = install_weights(sys.argv[1], sys.argv[2], log=lambda _: None)
print(folder, flush=True)
sys.stdin.readline()  # the test reinstalls meanwhile
print((folder / "a.bin").read_text() + " " + (folder / "b.bin").read_text(), flush=True)
"""


def two_versions(tmp_path: Path) -> tuple[Path, Path]:
    """Two packed tarballs of the same two files with other contents (v1 and v2)."""
    tars = []
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        for name in ("a.bin", "b.bin"):
            (tmp_path / v / name).write_text(f"{v}-{name}")
        tars.append(pack_folder(tmp_path / v, tmp_path / f"{v}.tar", log=lambda _: None))
    return tars[0], tars[1]


@pytest.mark.parametrize("layout", ["versioned", "plain"])
def test_a_reinstall_never_replaces_the_folder_another_process_is_loading(tmp_path, layout):
    """Process A loads v1 while this process installs v2 into the same dest: A keeps reading v1
    (versioned: v2 goes into a new folder; a plain folder of an older install: refused)."""
    v1, v2 = two_versions(tmp_path)
    dest = tmp_path / "w"
    if layout == "plain":  # the layout before versioned folders: files right in dest
        version = install_weights(v1, dest, log=lambda _: None)
        dest.unlink()
        version.rename(dest)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(v1), str(dest)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert reader.stdin is not None and reader.stdout is not None
    held = Path(reader.stdout.readline().strip())
    logs: list[str] = []
    if layout == "versioned":
        assert install_weights(v2, dest, log=logs.append) == dest.resolve() != held
        assert any(f"keeping {held}: another process still uses it" in line for line in logs)
        assert (dest / "a.bin").read_text() == "v2-a.bin"
    else:
        assert held == dest
        with pytest.raises(WeightsError, match=f"cannot reinstall weights into {dest}: another"):
            install_weights(v2, dest, log=logs.append)
    out, _ = reader.communicate("go\n", timeout=60)
    assert reader.returncode == 0 and out.strip() == "v1-a.bin v1-b.bin"
    install_weights(v2, dest, log=lambda _: None)  # A has exited: its folder is removed now
    assert dest.is_symlink() and (dest / "b.bin").read_text() == "v2-b.bin"
    assert held == dest or not held.exists()
    assert not (tmp_path / "w.readers").exists()
    assert [p for p in tmp_path.glob(".w.*") if p.is_dir()] == [dest.resolve()]


def pax_tarball(path: Path, records: bytes, declared: int | None = None) -> Path:
    """A pax extended header (its `declared` size, else its records' length), then a.bin."""
    info = tarfile.TarInfo("PaxHeaders/a.bin")
    info.type = tarfile.XHDTYPE
    info.size = len(records) if declared is None else declared
    out = info.tobuf(tarfile.GNU_FORMAT)  # base-256 size fields: gigabytes fit
    if declared is None:
        out += records + bytes(-len(records) % 512)
    member = tarfile.TarInfo("a.bin")
    member.size = 4
    out += member.tobuf(tarfile.GNU_FORMAT) + b"data" + bytes(508) + bytes(1024)
    path.write_bytes(out)
    return path


def pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    n = len(body) + len(str(len(body) + 2))
    return f"{n}{body}".encode()


def test_an_oversized_pax_header_is_refused_before_it_is_read(tmp_path):
    """8 GiB declared, nothing after the header: reading it would end in 'truncated'."""
    tar = pax_tarball(tmp_path / "huge.tar", b"", declared=8 << 30)
    with pytest.raises(WeightsError) as err:
        install_weights(tar, tmp_path / "w", log=lambda _: None)
    assert (
        "huge.tar: refusing the pax extended header at byte 0: it declares 8589934592 bytes, "
        "at most 1048576 are allowed"
    ) in str(err.value)
    no_leftovers(tmp_path / "w")


@pytest.mark.parametrize("size", ["abc", "1_0", "+4", "-5"])
def test_a_pax_size_record_that_is_not_a_decimal_number_is_refused(tmp_path, size):
    """int() takes "1_0" and "+4", tar does not: the checker and tar must see the same sizes."""
    tar = pax_tarball(tmp_path / "pax.tar", pax_record("size", size))
    with pytest.raises(WeightsError, match="pax.tar: corrupt pax header .*not a decimal number"):
        install_weights(tar, tmp_path / "w", log=lambda _: None)
    no_leftovers(tmp_path / "w")
    good = pax_tarball(tmp_path / "good.tar", pax_record("size", "4"))
    assert (install_weights(good, tmp_path / "ok", log=lambda _: None) / "a.bin").read_bytes() == (
        b"data"
    )
