"""Tar header checks while streaming: member filtering, sizes, the sha256 manifest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cogvx.errors import WeightsError

MANIFEST_NAME = "cogvx-manifest.json"
MARKER_NAME = ".cogvx-installed.json"

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_META_LIMIT = 1 << 20  # GNU long names and pax headers
_MANIFEST_LIMIT = 256 << 20


def looks_like_tar(head: bytes | memoryview) -> bool:
    """True when the first 512 bytes carry the ustar magic (POSIX or GNU)."""
    return len(head) >= _BLOCK and bytes(head[257:262]) == b"ustar"


def describe_head(head: bytes | memoryview) -> str:
    """What a download looks like, in words; response bytes are never quoted in messages."""
    head = bytes(head[:64])
    if not head:
        return "it is empty"
    if head.startswith(b"\x1f\x8b"):
        return "it is gzip-compressed (send an uncompressed .tar)"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip file"
    text = head.lstrip().lower()
    if text.startswith(b"<"):
        return "it looks like an HTML or XML page (a login or error page?)"
    if text.startswith((b"{", b"[")):
        return "it looks like JSON (an error answer?)"
    return "its first bytes are not a tar header"


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        if field[0] == 0xFF:
            raise ValueError("negative number")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    records = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        if not data[pos:space].isdigit():  # int() would also take "+1", " 1" and "1_0"
            raise ValueError("bad pax record length")
        length = int(data[pos:space])
        if length <= 0:
            raise ValueError("bad pax record length")
        key, value = data[space + 1 : pos + length - 1].split(b"=", 1)
        records[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarChecker:
    """Follow a tar stream header by header: refuse unsafe members, measure and hash files.

    Files are hashed only when the first member is the manifest. Hashing happens outside
    (see `feed`'s return value), so it can run beside the tar process.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.offset = 0
        self.ended = False
        self.manifest: dict[str, Any] | None = None
        self.files: dict[str, tuple[int, Any]] = {}
        self.links: set[str] = set()
        self._hash: bool | None = None
        self._members = 0
        self._head = bytearray()
        self._left = 0
        self._pad = 0
        self._sink: Any = None
        self._kind = ""
        self._member = ""
        self._pending: dict[str, Any] = {}

    def feed(self, data: memoryview) -> list[tuple[Any, memoryview]]:
        """Check the next bytes; return (sha256 object, bytes) pairs still to be hashed."""
        jobs: list[tuple[Any, memoryview]] = []
        pos, n = 0, len(data)
        while pos < n and not self.ended:
            if self._left:
                take = min(self._left, n - pos)
                piece = data[pos : pos + take]
                if isinstance(self._sink, bytearray):
                    self._sink += piece
                elif self._sink is not None:
                    jobs.append((self._sink, piece))
                self._left -= take
                pos += take
                if not self._left:
                    self._end_member()
            elif self._pad:
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
            else:
                take = min(_BLOCK - len(self._head), n - pos)
                self._head += data[pos : pos + take]
                pos += take
                if len(self._head) == _BLOCK:
                    head = bytes(self._head)
                    self._head.clear()
                    self._header(head, self.offset + pos - _BLOCK)
        self.offset += n
        return jobs

    def finish(self) -> None:
        """Raise if the stream stopped inside a member or before the end-of-archive block."""
        if self.ended:
            return
        if self._left or self._head:
            where = f"inside member {self._member!r}" if self._left else "inside a header"
            raise WeightsError(
                f"{self.label} is truncated: the tar stream ends {where} after {self.offset} bytes"
            )
        raise WeightsError(
            f"{self.label} is truncated: no end-of-archive block after {self.offset} bytes"
        )

    def digests(self) -> dict[str, tuple[int, str | None]]:
        """Member name -> (size, sha256 hex or None when not hashed). Call after hashing."""
        return {
            name: (size, h.hexdigest() if h is not None else None)
            for name, (size, h) in self.files.items()
        }

    def _fail(self, name: str, why: str) -> WeightsError:
        return WeightsError(f"{self.label}: refusing tar member {name!r}: {why}")

    def _header(self, head: bytes, at: int) -> None:
        if head == _ZERO_BLOCK:
            self.ended = True  # GNU tar stops at the first zero block too
            return
        if not looks_like_tar(head):
            if at == 0:
                raise WeightsError(f"{self.label} is not a tar archive")
            raise WeightsError(f"{self.label}: corrupt tar header at byte {at}")
        try:
            stored = _number(head[148:156])
            size = _number(head[124:136])
        except ValueError as e:
            raise WeightsError(f"{self.label}: corrupt tar header at byte {at}") from e
        unsigned = sum(head[:148]) + 8 * 32 + sum(head[156:])
        signed = unsigned - 256 * sum(1 for b in head[:148] + head[156:] if b > 127)
        if stored not in (unsigned, signed):
            raise WeightsError(f"{self.label}: corrupt tar header at byte {at} (bad checksum)")
        kind = head[156:157]
        if kind == b"g":  # tar applies its path/linkpath to later members: names seen here differ
            raise WeightsError(
                f"{self.label}: refusing the global pax header at byte {at}: tar would apply it "
                "to later members (repack without one, e.g. with tools/pack_weights.py)"
            )
        if kind in (b"L", b"K", b"x"):
            if size > _META_LIMIT:  # held in memory until its member: refused before reading
                what = {b"L": "GNU long name", b"K": "GNU long link name"}.get(kind, "pax extended")
                raise WeightsError(
                    f"{self.label}: refusing the {what} header at byte {at}: it declares "
                    f"{size} bytes, at most {_META_LIMIT} are allowed (corrupt or hostile tarball)"
                )
            self._start_data(size, bytearray(), kind.decode(), "<extension header>")
            return
        pending, self._pending = self._pending, {}
        name = pending.get("path")
        if name is None:
            name = _text(head[:100])
            if head[257:263] == b"ustar\x00" and head[345] != 0:
                name = _text(head[345:500]) + "/" + name
        link = pending.get("linkpath", _text(head[157:257]))
        size = pending.get("size", size)
        self._member_header(name, kind, link, size)

    def _member_header(self, raw: str, kind: bytes, link: str, size: int) -> None:
        name = self._clean(raw, raw)
        for i in range(1, name.count("/") + 1):
            if "/".join(name.split("/")[:i]) in self.links:
                raise self._fail(raw, "it lies below a symbolic link")
        if name == MARKER_NAME:
            raise self._fail(raw, "reserved name")
        first = self._members == 0
        self._members += 1
        if kind in (b"0", b"\0", b"7"):
            if not name:
                raise self._fail(raw, "empty file name")
            self.links.discard(name)
            if first and name == MANIFEST_NAME:
                self._hash = True
                if size > _MANIFEST_LIMIT:
                    raise self._fail(raw, "manifest too large")
                self._start_data(size, bytearray(), "manifest", name)
                return
            if self._hash is None:
                self._hash = False
            if name == MANIFEST_NAME and self.manifest is not None:
                raise self._fail(raw, "second manifest")
            h = hashlib.sha256() if self._hash else None
            self.files[name] = (size, h)
            self._start_data(size, h, "file", name)
        elif kind == b"5":
            self._start_data(size, None, "dir", name)
        elif kind == b"2":
            if link.startswith("/") or self._escapes(name, link):
                raise self._fail(raw, f"symbolic link to {link!r} points outside the folder")
            self.files.pop(name, None)
            self.links.add(name)
        elif kind == b"1":
            target = self._clean(link, raw)
            if target not in self.files:
                raise self._fail(raw, f"hard link to {link!r}, which is not a file in the archive")
            self.files[name] = self.files[target]
        elif kind in (b"3", b"4", b"6"):
            raise self._fail(raw, "device files and FIFOs are not allowed")
        else:
            raise self._fail(raw, f"unsupported member type {kind!r}")

    def _clean(self, path: str, raw: str) -> str:
        if path.startswith("/"):
            raise self._fail(raw, "absolute path")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._fail(raw, "'..' in path")
        return "/".join(parts)

    @staticmethod
    def _escapes(name: str, link: str) -> bool:
        parts = name.split("/")[:-1]
        for p in link.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if not parts:
                    return True
                parts.pop()
            else:
                parts.append(p)
        return False

    def _start_data(self, size: int, sink: Any, kind: str, name: str) -> None:
        self._left = size
        self._pad = -size % _BLOCK
        self._sink = sink
        self._kind = kind
        self._member = name
        if not size:
            self._end_member()

    def _end_member(self) -> None:
        sink, kind = self._sink, self._kind
        self._sink = None
        if kind in ("L", "K"):
            key = "path" if kind == "L" else "linkpath"
            self._pending[key] = bytes(sink).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == "x":
            try:
                records = _pax_records(bytes(sink))
            except ValueError as e:
                raise WeightsError(
                    f"{self.label}: corrupt pax header near byte {self.offset}"
                ) from e
            for key in ("path", "linkpath"):
                if key in records:
                    self._pending[key] = records[key]
            if "size" in records:
                if not (records["size"].isascii() and records["size"].isdigit()):
                    raise WeightsError(
                        f"{self.label}: corrupt pax header near byte {self.offset}: "
                        "its size record is not a decimal number"
                    )
                self._pending["size"] = int(records["size"])
            if any(k.startswith("GNU.sparse") for k in records):
                raise self._fail(records.get("path", "?"), "sparse files are not supported")
        elif kind == "manifest":
            self.manifest = parse_manifest(bytes(sink), self.label)


def parse_manifest(data: bytes, label: str) -> dict[str, Any]:
    """Parse and check the manifest's shape: {"format": 1, "files": {rel: {size, sha256}}}."""
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        ok = manifest.get("format") == 1 and isinstance(files, dict)
        ok = ok and all(
            isinstance(v, dict)
            and isinstance(v.get("size"), int)
            and isinstance(v.get("sha256"), str)
            and len(v["sha256"]) == 64
            for v in files.values()
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{label}: {MANIFEST_NAME} is not a valid manifest ({e})") from e
    if not ok:
        raise WeightsError(f"{label}: {MANIFEST_NAME} is not a valid manifest (format 1 expected)")
    return manifest
