"""The caption batch input unpacks hostile archives and URL lists safely, clip by clip."""

from __future__ import annotations

import io
import socket
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from cogvx.errors import InputError
from cogvx.services import caption_inputs as ci
from cogvx.services.caption_inputs import BatchTooLarge, unpack_batch
from tests.support.weights_server import WeightsServer

CLIP = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8  # bytes only: unpacking never decodes


def _zip(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def _unpack(source: Path, tmp_path: Path, **caps):
    folder = tmp_path / "out"
    items = unpack_batch(source, folder, lambda _: None, **caps)
    return items, folder


def test_zip_names_are_labels_only_and_links_are_refused(tmp_path):
    source = _zip(tmp_path / "b.zip", [
        ("a.mp4", CLIP, None),
        ("../../escape.mp4", CLIP, None),
        ("/abs/olute.mov", CLIP, None),
        ("dir/", b"", None),
        ("link.mp4", b"/etc/passwd", stat.S_IFLNK | 0o777),
        ("sub/b.webm", CLIP, stat.S_IFREG | 0o644),
    ])  # fmt: skip
    items, folder = _unpack(source, tmp_path)
    assert [i.label for i in items] == [
        "a.mp4", "../../escape.mp4", "/abs/olute.mov", "link.mp4", "sub/b.webm",
    ]  # fmt: skip
    assert "not a regular file" in items[3].error and items[3].path is None
    written = sorted(p.name for p in folder.iterdir())
    assert written == ["00001.mp4", "00002.mp4", "00003.mov", "00005.webm"]
    assert all(p.read_bytes() == CLIP for p in folder.iterdir())
    assert not (tmp_path / "escape.mp4").exists() and not Path("/abs/olute.mov").exists()


def test_tar_takes_regular_files_only(tmp_path):
    link = tarfile.TarInfo("evil.mp4")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
    hard = tarfile.TarInfo("hard.mp4")
    hard.type, hard.linkname = tarfile.LNKTYPE, "a.mp4"
    dev = tarfile.TarInfo("dev.mp4")
    dev.type = tarfile.CHRTYPE
    source = _tar(tmp_path / "b.tar", [("a.mp4", CLIP), link, hard, dev, ("../up.mkv", CLIP)])
    items, folder = _unpack(source, tmp_path)
    assert [(i.label, i.error is None) for i in items] == [
        ("a.mp4", True), ("evil.mp4", False), ("hard.mp4", False), ("dev.mp4", False),
        ("../up.mkv", True),
    ]  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == ["00001.mp4", "00005.mkv"]
    assert not (tmp_path / "up.mkv").exists()


def test_size_caps_count_streamed_bytes(tmp_path):
    # a highly compressible member: its compressed size says nothing of what it unpacks to
    big = b"\x00" * (3 << 20)
    source = _zip(tmp_path / "bomb.zip", [("a.mp4", CLIP, None), ("big.mp4", big, None)])
    items, _ = _unpack(source, tmp_path, max_clip_bytes=1 << 20)
    assert items[0].error is None and "big.mp4 is over 1 MiB" in items[1].error
    with pytest.raises(BatchTooLarge, match=r"unpacks to over 2 MiB \(the batch limit\); split it"):
        _unpack(source, tmp_path / "t", max_total_bytes=2 << 20)
    many = _zip(tmp_path / "many.zip", [(f"{i}.mp4", CLIP, None) for i in range(5)])
    with pytest.raises(BatchTooLarge, match="more than 4 clips"):
        _unpack(many, tmp_path / "m", max_clips=4)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "holds no clips"),
        (b"\xff\xfe\x00garbage" * 10, "UTF-8 text file with one https URL per line"),
        (b"# only a comment\n\n", "holds no clips"),
    ],
)
def test_unusable_inputs_name_what_is_accepted(tmp_path, data, match):
    source = tmp_path / "x.bin"
    source.write_bytes(data)
    with pytest.raises(InputError, match=match):
        _unpack(source, tmp_path)


def test_damaged_tar_is_refused(tmp_path):
    whole = _tar(tmp_path / "b.tar", [("a.mp4", CLIP * 4)]).read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[:700])
    with pytest.raises(InputError, match="tar archive is damaged"):
        _unpack(cut, tmp_path)


def test_url_lists_never_read_local_files_and_refuse_private_addresses(tmp_path, monkeypatch):
    monkeypatch.delenv("COGVX_ALLOW_PRIVATE_URLS", raising=False)
    with WeightsServer({"/a.mp4": CLIP}) as srv:
        listing = tmp_path / "urls.txt"
        listing.write_text(f"/etc/passwd\nfile:///etc/passwd\n{srv.url('/a.mp4')}?token=secret\n")
        items, folder = _unpack(listing, tmp_path)
    assert "local paths are never read" in items[0].error
    assert "local paths are never read" in items[1].error
    assert "could not download it" in items[2].error and "secret" not in items[2].error
    assert list(folder.iterdir()) == []


def test_url_lists_download_allowed_hosts(tmp_path, monkeypatch):
    with WeightsServer({"/a.mp4": CLIP, "/b.webm": CLIP}) as srv:
        monkeypatch.setenv("COGVX_ALLOW_PRIVATE_URLS", f"127.0.0.1:{srv.port}")
        listing = tmp_path / "urls.txt"
        lines = [srv.url("/a.mp4"), "# a comment", "", srv.url("/missing.mp4"), srv.url("/b.webm")]
        listing.write_text("\n".join(lines))
        items, folder = _unpack(listing, tmp_path)
    assert [i.error is None for i in items] == [True, False, True]
    assert [p.read_bytes() for p in sorted(folder.iterdir())] == [CLIP, CLIP]
    assert items[1].label.endswith("/missing.mp4")


def _folders(n: int) -> list[tarfile.TarInfo | tuple[str, bytes]]:
    folders: list[tarfile.TarInfo | tuple[str, bytes]] = []
    for i in range(n):
        info = tarfile.TarInfo(f"d{i}/")
        info.type = tarfile.DIRTYPE
        folders.append(info)
    return folders


def test_every_archive_entry_counts_folders_included(tmp_path, monkeypatch):
    """Folder headers cost nothing to send and were not counted: now every entry counts."""
    monkeypatch.setattr(ci, "MAX_MEMBERS", 20)
    ok = _tar(tmp_path / "ok.tar", [*_folders(19), ("a.mp4", CLIP)])
    assert [i.error for i in _unpack(ok, tmp_path / "o")[0]] == [None]
    source = _tar(tmp_path / "d.tar", [*_folders(50), ("a.mp4", CLIP)])
    with pytest.raises(BatchTooLarge, match="more than 20 entries .clips, folders and links"):
        _unpack(source, tmp_path / "t")
    many = _zip(
        tmp_path / "d.zip", [*((f"d{i}/", b"", None) for i in range(50)), ("a.mp4", CLIP, None)]
    )
    with pytest.raises(BatchTooLarge, match="more than 20 entries"):
        _unpack(many, tmp_path / "z")


def test_a_zip_whose_directory_is_too_big_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(ci, "MAX_ZIP_DIRECTORY", 1000)
    source = _zip(tmp_path / "n.zip", [(f"{'x' * 40}{i}.mp4", b"", None) for i in range(30)])
    with pytest.raises(BatchTooLarge, match="more than"):
        _unpack(source, tmp_path)


def test_skipped_tar_data_counts_toward_the_total(tmp_path):
    """Members over the clip cap become rows unread, but their data is still decompressed to
    reach the next header: it counts, so small uploads cannot unpack without end."""
    big = b"\x00" * (2 << 20)
    few = _tar(tmp_path / "few.tar.gz", [("big.mp4", big), ("a.mp4", CLIP)], "w:gz")
    items, folder = _unpack(few, tmp_path / "f", max_clip_bytes=1 << 20)
    assert "big.mp4 is over 1 MiB" in items[0].error and items[1].error is None
    assert [p.read_bytes() for p in folder.iterdir()] == [CLIP]  # the big one was never written
    many = _tar(tmp_path / "many.tar.gz", [(f"{i}.mp4", big) for i in range(6)], "w:gz")
    with pytest.raises(BatchTooLarge, match="unpacks to over 8 MiB .the batch limit"):
        _unpack(many, tmp_path / "m", max_clip_bytes=1 << 20, max_total_bytes=8 << 20)


def test_a_declared_size_past_the_total_stops_before_it_is_decompressed(tmp_path):
    source = tmp_path / "one.tar.gz"
    with tarfile.open(source, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("huge.mp4")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(b"\x00" * info.size))
    with pytest.raises(BatchTooLarge, match="over 8 MiB"):
        _unpack(source, tmp_path, max_total_bytes=8 << 20)


def test_an_archive_unpacks_to_at_most_a_multiple_of_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(ci, "RATIO_FLOOR", 1 << 20)
    zeros = b"\x00" * (4 << 20)  # about 20 kB compressed: a 4 MiB clip is 200 times that
    for source in (_tar(tmp_path / "z.tar.gz", [("z.mp4", zeros)], "w:gz"),
                   _zip(tmp_path / "z.zip", [("z.mp4", zeros, None)])):  # fmt: skip
        with pytest.raises(BatchTooLarge, match=r"over 1 MiB \(50 times its own size\)"):
            _unpack(source, tmp_path / source.suffix[1:])


def test_oversized_tar_headers_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ci, "HEADER_WINDOW", 64 << 10)
    info = tarfile.TarInfo("a.mp4")
    info.size = len(CLIP)
    info.pax_headers = {"comment": "x" * (200 << 10)}  # read whole into memory by tarfile
    source = tmp_path / "pax.tar"
    with tarfile.open(source, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("first.mp4"))
        tf.addfile(info, io.BytesIO(CLIP))
    with pytest.raises(InputError, match="a tar header is over 0 MiB"):
        _unpack(source, tmp_path)


def _raw_server(answer: bytes) -> tuple[socket.socket, str]:
    """A loopback server that sends `answer` to every connection and closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return server, f"127.0.0.1:{server.getsockname()[1]}"


def test_a_cut_or_garbled_download_is_its_row_only(tmp_path, monkeypatch):
    """A body shorter than its Content-Length, or chunked garbage: that URL's row fails with the
    usual message; the other URLs are still fetched."""
    with WeightsServer({"/a.mp4": CLIP}, short_by=100) as short:
        garbled, where = _raw_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc"
        )
        with WeightsServer({"/b.mp4": CLIP}) as good, garbled:
            allowed = f"127.0.0.1:{short.port},{where},127.0.0.1:{good.port}"
            monkeypatch.setenv("COGVX_ALLOW_PRIVATE_URLS", allowed)
            listing = tmp_path / "urls.txt"
            urls = [short.url("/a.mp4"), f"http://{where}/c.mp4", good.url("/b.mp4")]
            listing.write_text("\n".join(urls))
            items, _ = _unpack(listing, tmp_path)
    assert "could not download it" in items[0].error
    assert "could not download it" in items[1].error
    assert items[2].error is None and items[2].path.read_bytes() == CLIP


# A `videos` URL is fetched by the runtime with no address check, so a "URL list" may be any
# internal answer (a metadata service's credentials): its lines must never come back.
SECRETS = ("ASIAEXAMPLESECRET123", "wJalrXUtnFEMI/K7MDENG", "IQoJb3JpZ2luX2VjTOKEN", "QUERYTOKEN")
METADATA = (
    '{\n  "Code" : "Success",\n  "AccessKeyId" : "ASIAEXAMPLESECRET123",\n'
    '  "SecretAccessKey" : "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY",\n'
    '  "Token" : "IQoJb3JpZ2luX2VjTOKEN"\n}\n'
)


class _NoModel:
    """The caption service's surface the batch touches when no clip is readable."""

    captioner = None

    def __init__(self) -> None:
        self.logs: list[str] = []

    def log(self, message: str) -> None:
        self.logs.append(message)

    def check_length(self, *_: object) -> None:
        """The prompt fits: this test is about the URL list."""


def test_lines_that_are_not_urls_are_named_by_number_never_quoted(tmp_path, monkeypatch):
    import json

    from cogvx.services.caption_batch import caption_batch_file

    monkeypatch.setenv("COGVX_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("COGVX_ALLOW_PRIVATE_URLS", raising=False)  # the URL line is refused
    listing = tmp_path / "body"
    lines = [
        '"AccessKeyId" : "ASIAEXAMPLESECRET123",',
        "# wJalrXUtnFEMI/K7MDENG a comment",
        "http://x/ wJalrXUtnFEMI/K7MDENG",  # http(s) at the start, but not a URL
        "",
        "http://127.0.0.1:9/a.mp4?t=QUERYTOKEN",  # a URL: shown without its query
        "IQoJb3JpZ2luX2VjTOKEN",
    ]
    listing.write_text("\n".join(lines))
    service = _NoModel()
    out = caption_batch_file(service, listing, "Describe.", "chat", 16, batch_size=1)
    text = out.read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [r["path"] for r in rows] == ["line 1", "line 3", "http://127.0.0.1:9/a.mp4", "line 6"]
    assert rows[0]["error"].endswith("line 1: not an http(s) URL (local paths are never read; "
                                     "the line is not quoted)")  # fmt: skip
    assert "line 3: not a valid http(s) URL" in rows[1]["error"]
    assert "could not download it" in rows[2]["error"]
    for secret in SECRETS:
        assert secret not in text and not any(secret in m for m in service.logs), secret


def test_a_body_without_one_url_is_refused_whole(tmp_path):
    source = tmp_path / "role"
    source.write_text(METADATA)
    with pytest.raises(InputError) as err:
        _unpack(source, tmp_path)
    message = str(err.value)
    assert message.startswith("videos: neither a zip/tar archive nor a list of http(s) URLs")
    assert not any(secret in message for secret in SECRETS)


def test_a_trickling_clip_url_stops_at_its_deadline_and_is_its_row_only(tmp_path, monkeypatch):
    from tests.net.slow_server import GIVE_UP_S, SlowServer

    # The limit also covers the good URL, so it leaves room for a loaded machine; the slow
    # server only closes its trickle after GIVE_UP_S, so only the deadline can end it sooner.
    deadline = 2.0
    assert deadline < GIVE_UP_S
    monkeypatch.setattr(ci, "CLIP_DEADLINE_S", deadline)
    with SlowServer("body") as slow, WeightsServer({"/b.mp4": CLIP}) as good:
        listing = tmp_path / "urls.txt"
        listing.write_text(f"{slow.url('/a.mp4')}?sig=s\n{good.url('/b.mp4')}\n")
        items, _ = _unpack(listing, tmp_path)
    assert items[0].path is None and items[0].error == (
        f"videos {slow.url('/a.mp4')}: the download took longer than {deadline:g} s (the limit for "
        "one file); give a faster host or a smaller file"
    )
    assert items[1].error is None and items[1].path.read_bytes() == CLIP
