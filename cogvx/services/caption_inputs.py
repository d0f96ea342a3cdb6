"""The caption batch input: a .zip or .tar of clips, or a text file of https URLs -> local files.

Hostile input is the norm here. Member names are labels only: every clip is written under a
generated name (`00007.mp4`) in a fresh folder, so no name can reach outside it; only regular
files are taken (links, devices, folders are skipped or become error rows); sizes are counted
while streaming, never trusted from headers (zip bombs stop at the cap). A tar is read as one
metered stream: every decompressed byte counts, skipped data and headers included, so an archive
unpacks to at most its cap (50 times its own size, 256 MiB at least, 50 GiB at most); headers of
any kind (folders too) count against `MAX_MEMBERS`. URL lists go through the user URL policy (no
private addresses, every redirect checked), each URL within CLIP_DEADLINE_S, and never name local
files. The list may be a body the runtime fetched from anywhere: a line that is not an http(s) URL
is named by its number only, never quoted (rows, errors, logs), and a file without one valid URL
line is refused whole.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import http.client
import io
import lzma
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from cogvx.errors import InputError, WeightsError
from cogvx.log import clip
from cogvx.net.http import Deadline, open_first
from cogvx.net.urls import UrlError, UrlPolicy, fetch_failed, safe_url, split_url, user_url_policy

Log = Callable[[str], None]

NAME = "videos"
MAX_CLIPS = 10_000
MAX_CLIP_BYTES = 2 << 30  # one clip
MAX_TOTAL_BYTES = 50 << 30  # the whole archive, uncompressed
MAX_LIST_BYTES = 4 << 20  # a URL list file
MAX_MEMBERS = 4 * MAX_CLIPS  # archive entries of any kind: clips, folders, links
MAX_RATIO = 50  # an archive unpacks to at most this many times its own size...
RATIO_FLOOR = 256 << 20  # ...or this much, whichever is more (clips hardly compress)
HEADER_WINDOW = 16 << 20  # a tar's headers before one member (long names, pax records)
MAX_ZIP_DIRECTORY = 32 << 20  # a zip's central directory (about 40,000 names of 700 bytes)
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
LABEL_CHARS = 300
CHUNK = 1 << 20
STALL_TIMEOUT = 60.0  # one read of a listed URL may wait this long
CLIP_DEADLINE_S = 300.0  # one listed URL as a whole (redirects, retries, reads): 2 GiB at 7 MB/s


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


def _size(n: int) -> str:
    return f"{n >> 30} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


class _Source(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Budget:
    """Bytes written so far against the per-clip and total caps."""

    def __init__(self, max_clip: int, max_total: int, why: str = "the batch limit"):
        self.max_clip, self.max_total, self.why, self.total = max_clip, max_total, why, 0

    @classmethod
    def for_archive(cls, source: Path, max_clip: int, max_total: int) -> _Budget:
        """The total cap of an archive: MAX_RATIO times its size (RATIO_FLOOR at least)."""
        by_ratio = max(RATIO_FLOOR, MAX_RATIO * source.stat().st_size)
        if by_ratio < max_total:
            return cls(max_clip, by_ratio, f"{MAX_RATIO} times its own size")
        return cls(max_clip, max_total)

    def over_total(self) -> BatchTooLarge:
        return BatchTooLarge(
            f"{NAME}: the archive unpacks to over {_size(self.max_total)} ({self.why}); "
            "split it into smaller batches"
        )

    def over_clip(self, label: str) -> InputError:
        return InputError(
            f"{NAME}: {label} is over {_size(self.max_clip)}; clips up to that size are accepted"
        )

    def copy(self, src: _Source, dest: Path, label: str) -> int:
        """Copy src to a new file dest under the caps; returns the bytes written."""
        written = 0
        with open(dest, "xb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                self.total += len(chunk)
                if written > self.max_clip:
                    raise self.over_clip(label)
                if self.total > self.max_total:
                    raise self.over_total()
                out.write(chunk)
        return written


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
    archive = _Budget.for_archive(source, max_clip_bytes, max_total_bytes)
    if zipfile.is_zipfile(source):
        items = list(_from_zip(source, folder, archive, max_clips))
    elif _is_tar(source, archive):
        items = list(_from_tar(source, folder, archive, max_clips))
    else:
        budget = _Budget(max_clip_bytes, max_total_bytes)
        items = _from_list(source, folder, budget, max_clips, log)
    if not items:
        raise InputError(f"{NAME}: the input holds no clips")
    log(f"{NAME}: {len(items)} clips ({sum(i.error is not None for i in items)} unusable)")
    return items


def _is_tar(path: Path, budget: _Budget) -> bool:
    """A tar (plain, gzip, bzip2 or xz) whose first header reads within the header window."""
    try:
        with _metered_tar(path, budget) as (tf, _):
            return tf.next() is not None
    except (tarfile.TarError, EOFError, OSError, InputError, RecursionError, lzma.LZMAError):
        return False


class _Metered(io.RawIOBase):
    """A decompressed tar stream that refuses to read past `limit`: the end of the member being
    read plus HEADER_WINDOW, never past the budget's total (BatchTooLarge)."""

    def __init__(self, raw: IO[bytes], budget: _Budget):
        self.raw, self.budget, self.pos, self.limit = raw, budget, 0, HEADER_WINDOW

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        limit = min(self.limit, self.budget.max_total)
        room = limit - self.pos
        if room <= 0 and len(buffer):
            if limit == self.budget.max_total:
                raise self.budget.over_total()
            raise InputError(
                f"{NAME}: a tar header is over {_size(HEADER_WINDOW)} (long names or pax "
                "records); such archives are not accepted"
            )
        view = memoryview(buffer)[:room]
        n = self.raw.readinto(view)  # type: ignore[attr-defined]
        self.pos += n
        return n


_COMPRESSED = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))


@contextmanager
def _metered_tar(path: Path, budget: _Budget) -> Iterator[tuple[tarfile.TarFile, _Metered]]:
    """`with _metered_tar(path, budget) as (tar, meter)`: the archive as a stream ("r|")."""
    with open(path, "rb") as f:
        head = f.read(6)
    opener = next((op for magic, op in _COMPRESSED if head.startswith(magic)), open)
    with opener(path, "rb") as raw:
        meter = _Metered(raw, budget)  # type: ignore[arg-type]
        with tarfile.open(fileobj=meter, mode="r|") as tar:
            yield tar, meter


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


def _too_many_members() -> BatchTooLarge:
    return BatchTooLarge(
        f"{NAME}: the archive has more than {MAX_MEMBERS} entries (clips, folders and links "
        "together); split the batch"
    )


def _refuse(error: InputError) -> IO[bytes]:
    raise error


def _zip_directory_bytes(source: Path) -> int:
    """The size its end record gives the zip's central directory (0 when it cannot tell)."""
    end_record = getattr(zipfile, "_EndRecData", None)  # CPython's reader of that record
    if end_record is None:
        return 0
    with open(source, "rb") as f:
        record = end_record(f)
    return int(record[zipfile._ECD_SIZE]) if record else 0  # type: ignore[attr-defined]


def _from_zip(source: Path, folder: Path, budget: _Budget, max_clips: int) -> Iterator[BatchItem]:
    def members(zf: zipfile.ZipFile) -> Iterator[tuple[str, Opener | None]]:
        for info in zf.infolist():
            if info.is_dir():
                continue
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a file)
            if kind and kind != stat.S_IFREG:
                yield info.filename, None
            elif info.file_size > budget.max_clip:  # said too big: refused unread
                yield (
                    info.filename,
                    functools.partial(_refuse, budget.over_clip(_label(info.filename))),
                )
            else:
                yield info.filename, functools.partial(zf.open, info)

    if _zip_directory_bytes(source) > MAX_ZIP_DIRECTORY:  # read whole by ZipFile: refuse first
        raise _too_many_members()
    # corrupt member, bad CRC, encrypted or unsupported compression: that clip's row
    errors = (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError)
    with zipfile.ZipFile(source) as zf:
        if len(zf.infolist()) > MAX_MEMBERS:
            raise _too_many_members()
        yield from _take(members(zf), folder, budget, max_clips, errors)


def _from_tar(source: Path, folder: Path, budget: _Budget, max_clips: int) -> Iterator[BatchItem]:
    def members(tf: tarfile.TarFile, meter: _Metered) -> Iterator[tuple[str, Opener | None]]:
        count = 0
        while (member := tf.next()) is not None:
            tf.members.clear()  # type: ignore[attr-defined]  # one header at a time: a stream of headers costs no memory
            count += 1
            if count > MAX_MEMBERS:
                raise _too_many_members()
            if tf.offset > budget.max_total:  # this member's data would pass the cap
                raise budget.over_total()
            meter.limit = tf.offset + HEADER_WINDOW  # its data, then the next headers
            if member.isdir():
                continue
            if not member.isreg() or member.issparse():
                yield member.name, None
            elif member.size > budget.max_clip:  # said too big: refused, its data skipped
                yield member.name, functools.partial(_refuse, budget.over_clip(_label(member.name)))
            else:
                src = tf.extractfile(member)
                yield member.name, functools.partial(_same, src) if src is not None else None

    damage = (tarfile.TarError, EOFError, OSError, RecursionError, lzma.LZMAError)
    try:
        with _metered_tar(source, budget) as (tf, meter):
            yield from _take(members(tf, meter), folder, budget, max_clips)
    except damage as exc:
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
    entries = []  # (line number, the line, why it is not a URL or None)
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((number, line, _not_a_url(line)))
    if entries and all(why for _, _, why in entries):
        raise InputError(
            f"{NAME}: neither a zip/tar archive nor a list of http(s) URLs (no line is an "
            "http(s) URL; send a .zip or .tar of clips or a text file with one URL per line)"
        )
    _count(len(entries), max_clips)
    policy = user_url_policy(NAME)
    items = []
    for n, (number, url, why) in enumerate(entries, 1):
        if why:  # named by its number only: the file may be any server's answer (a secret)
            items.append(BatchItem(f"line {number}", None, f"line {number}: {why}"))
            continue
        label = safe_url(url, LABEL_CHARS)
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


def _not_a_url(line: str) -> str | None:
    """Why a list line is not a URL to fetch (in words that never quote it), or None."""
    if not line.lower().startswith(("https://", "http://")):
        return "not an http(s) URL (local paths are never read; the line is not quoted)"
    try:
        split_url(line, NAME)
    except UrlError:
        return (
            "not a valid http(s) URL (spaces, control or non-ASCII characters, a bad port or "
            "host, or too long; the line is not quoted)"
        )
    return None


def _download(url: str, dest: Path, budget: _Budget, policy: UrlPolicy, log: Log) -> None:
    """Fetch a user URL under the policy; every network failure gives one generic message."""
    with Deadline(NAME, url, CLIP_DEADLINE_S) as deadline:
        _download_within(url, dest, budget, policy, log, deadline)


def _download_within(
    url: str, dest: Path, budget: _Budget, policy: UrlPolicy, log: Log, deadline: Deadline
) -> None:
    failed = InputError(fetch_failed(NAME, url))
    try:  # the deadline passing raises DeadlineExceeded, an InputError: that clip's row
        _, conn, resp = open_first(
            url, budget.max_clip + 1, STALL_TIMEOUT, log, policy=policy, deadline=deadline
        )
    except (WeightsError, UrlError):
        raise failed from None
    try:
        written = budget.copy(deadline.body(resp), dest, safe_url(url, LABEL_CHARS))
        said = resp.getheader("Content-Length")
        if said is not None and said.strip().isdigit() and int(said) != written:
            raise OSError("the body is shorter than its Content-Length")  # a cut transfer
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise failed from None
    finally:
        conn.close()
