"""The caption batch input: a .zip or .tar of clips, or a text file of https URLs -> local files.

Hostile input is the norm here. Member names are labels only: every clip is written under a
generated name (`00007.mp4`) in a fresh folder, so no name can reach outside it; only regular
files are taken (links, devices, folders are skipped or become error rows); sizes are counted
while streaming, never trusted from headers (zip bombs stop at the cap); URL lists go through
the user URL policy (no private addresses, every redirect checked) and never name local files.
"""

from __future__ import annotations

import functools
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from cogvx.errors import InputError, WeightsError
from cogvx.log import clip
from cogvx.net.http import open_first
from cogvx.net.urls import UrlError, UrlPolicy, fetch_failed, safe_url, user_url_policy

Log = Callable[[str], None]

NAME = "videos"
MAX_CLIPS = 10_000
MAX_CLIP_BYTES = 2 << 30  # one clip
MAX_TOTAL_BYTES = 50 << 30  # the whole archive, uncompressed
MAX_LIST_BYTES = 4 << 20  # a URL list file
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
LABEL_CHARS = 300
CHUNK = 1 << 20
STALL_TIMEOUT = 60.0


class BatchTooLarge(InputError):
    """The batch as a whole is over a cap (stops the unpacking; a big clip is only its row)."""


@dataclass
class BatchItem:
    """One clip of the batch: its label (member name or URL), local file or the error."""

    label: str
    path: Path | None
    error: str | None = None


def _label(name: str) -> str:
    return clip("".join(c if c.isprintable() else "?" for c in name), LABEL_CHARS)


def _suffix(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".bin"


class _Budget:
    """Bytes written so far against the per-clip and total caps."""

    def __init__(self, max_clip: int, max_total: int):
        self.max_clip, self.max_total, self.total = max_clip, max_total, 0

    def copy(self, src: IO[bytes], dest: Path, label: str) -> None:
        written = 0
        with open(dest, "xb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                if written > self.max_clip:
                    raise InputError(
                        f"{NAME}: {label} is over {self.max_clip >> 20} MiB; clips up to that "
                        "size are accepted"
                    )
                if self.total > self.max_total:
                    raise BatchTooLarge(
                        f"{NAME}: the archive unpacks to over {self.max_total >> 30} GiB; "
                        "split it into smaller batches"
                    )
                out.write(chunk)


def unpack_batch(
    source: Path,
    folder: Path,
    log: Log,
    max_clips: int = MAX_CLIPS,
    max_clip_bytes: int = MAX_CLIP_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> list[BatchItem]:
    """The clips of `source` (zip, tar or URL list, told apart by content) in `folder`, in order.

    Raises InputError when the input as a whole is unusable (not an archive or list, too many
    clips, over the total size); a bad clip is an item with its error.
    """
    folder.mkdir(parents=True, exist_ok=True)
    budget = _Budget(max_clip_bytes, max_total_bytes)
    if zipfile.is_zipfile(source):
        items = list(_from_zip(source, folder, budget, max_clips))
    elif _is_tar(source):
        items = list(_from_tar(source, folder, budget, max_clips))
    else:
        items = _from_list(source, folder, budget, max_clips, log)
    if not items:
        raise InputError(f"{NAME}: the input holds no clips")
    log(f"{NAME}: {len(items)} clips ({sum(i.error is not None for i in items)} unusable)")
    return items


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _count(n: int, max_clips: int) -> None:
    if n > max_clips:
        raise BatchTooLarge(f"{NAME}: more than {max_clips} clips; split the batch")


Opener = Callable[[], IO[bytes]]


def _same(src: IO[bytes]) -> IO[bytes]:
    return src


def _take(
    members: Iterator[tuple[str, Opener | None]],
    folder: Path,
    budget: _Budget,
    max_clips: int,
    member_errors: tuple[type[BaseException], ...] = (),
) -> Iterator[BatchItem]:
    """Items of an archive's file members, (name, opener or None for a link or device), each
    copied under a generated name; `member_errors` make only that clip's row."""
    for n, (name, opener) in enumerate(members, 1):
        _count(n, max_clips)
        label = _label(name)
        if opener is None:
            yield BatchItem(label, None, f"{label}: not a regular file (a link or device)")
            continue
        dest = folder / f"{n:05d}{_suffix(name)}"
        try:
            with opener() as src:
                budget.copy(src, dest, label)
        except BatchTooLarge:
            raise
        except InputError as exc:
            yield BatchItem(label, None, str(exc))
            continue
        except member_errors as exc:
            yield BatchItem(label, None, f"{label}: cannot be unpacked ({type(exc).__name__})")
            continue
        yield BatchItem(label, dest)


def _from_zip(source: Path, folder: Path, budget: _Budget, max_clips: int) -> Iterator[BatchItem]:
    def members(zf: zipfile.ZipFile) -> Iterator[tuple[str, Opener | None]]:
        for info in zf.infolist():
            if info.is_dir():
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a file)
            regular = not kind or kind == stat.S_IFREG
            yield info.filename, functools.partial(zf.open, info) if regular else None

    # corrupt member, bad CRC, encrypted or unsupported compression: that clip's row
    errors = (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError)
    with zipfile.ZipFile(source) as zf:
        yield from _take(members(zf), folder, budget, max_clips, errors)


def _from_tar(source: Path, folder: Path, budget: _Budget, max_clips: int) -> Iterator[BatchItem]:
    def members(tf: tarfile.TarFile) -> Iterator[tuple[str, Opener | None]]:
        for member in tf:
            if member.isdir():
                continue
            src = tf.extractfile(member) if member.isreg() else None
            yield member.name, functools.partial(_same, src) if src is not None else None

    try:
        with tarfile.open(source, "r:*") as tf:
            yield from _take(members(tf), folder, budget, max_clips)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"{NAME}: the tar archive is damaged ({type(exc).__name__})") from None


def _from_list(
    source: Path, folder: Path, budget: _Budget, max_clips: int, log: Log
) -> list[BatchItem]:
    if source.stat().st_size > MAX_LIST_BYTES:
        raise InputError(f"{NAME}: not a .zip or .tar, and too large for a list of URLs")
    try:
        text = source.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(
            f"{NAME}: not a .zip, a .tar or a UTF-8 text file with one https URL per line"
        ) from None
    lines = [line.strip() for line in text.splitlines()]
    urls = [line for line in lines if line and not line.startswith("#")]
    _count(len(urls), max_clips)
    policy = user_url_policy(NAME)
    items = []
    for n, url in enumerate(urls, 1):
        label = safe_url(url, LABEL_CHARS)
        if not url.lower().startswith(("https://", "http://")):
            items.append(BatchItem(label, None, f"{label}: not an http(s) URL (local paths are "
                                                "never read)"))  # fmt: skip
            continue
        dest = folder / f"{n:05d}{_suffix(url.split('?', 1)[0])}"
        try:
            _download(url, dest, budget, policy, log)
        except BatchTooLarge:
            raise
        except InputError as exc:
            items.append(BatchItem(label, None, str(exc)))
            continue
        items.append(BatchItem(label, dest))
    return items


def _download(url: str, dest: Path, budget: _Budget, policy: UrlPolicy, log: Log) -> None:
    """Fetch a user URL under the policy; every network failure gives one generic message."""
    failed = InputError(fetch_failed(NAME, url))
    try:
        _, conn, resp = open_first(url, budget.max_clip + 1, STALL_TIMEOUT, log, policy=policy)
    except (WeightsError, UrlError):
        raise failed from None
    try:
        budget.copy(resp, dest, safe_url(url, LABEL_CHARS))
    except OSError:
        raise failed from None
    finally:
        conn.close()
