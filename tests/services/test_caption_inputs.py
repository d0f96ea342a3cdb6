"""The caption batch input unpacks hostile archives and URL lists safely, clip by clip."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from cogvx.errors import InputError
from cogvx.services.caption_inputs import BatchTooLarge, unpack_batch
from tests.support.weights_server import WeightsServer

CLIP = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8  # bytes only: unpacking never decodes


def _zip(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
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
    with pytest.raises(BatchTooLarge, match="unpacks to over 0 GiB; split it"):
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
