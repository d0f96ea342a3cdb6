"""Pack a folder into a weight tarball with a sha256 manifest first, which installs check."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cogvx import settings
from cogvx.weights.tarcheck import MANIFEST_NAME, MARKER_NAME

Log = Callable[[str], None]


def pack_folder(src: str | os.PathLike, out_tar: str | os.PathLike, log: Log = print) -> Path:
    """Write an uncompressed tarball of `src`'s files (sorted, links dereferenced), manifest first.

    The manifest member `cogvx-manifest.json` is {"format": 1, "files": {rel: {size, sha256}}}.
    The bytes depend only on the files' names, contents and executable bits: every member gets
    the mtime `SOURCE_DATE_EPOCH` (0 when unset), so packing the same weights twice, anywhere,
    gives the same tarball and the same sha256 to pin.
    """
    root = Path(src)
    out = Path(out_tar)
    if not root.is_dir():
        raise ValueError(f"pack_folder: source {root} is not a folder")
    skip = {out.resolve(), out.with_name(out.name + ".partial").resolve()}
    partials = (out.parent.resolve(), f".{out.name}.", ".partial")  # any packer's temp file
    rels = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in (MANIFEST_NAME, MARKER_NAME) or full.resolve() in skip:
                continue
            if _is_partial(full, *partials):
                continue
            if not full.is_file():
                raise ValueError(f"pack_folder: {full} is not a regular file (broken link?)")
            rels.append(rel)
    rels.sort()
    sizes = {rel: (root / rel).stat().st_size for rel in rels}
    digests = hash_files(root, rels)
    manifest = {
        "format": 1,
        "files": {rel: {"size": sizes[rel], "sha256": digests[rel]} for rel in rels},
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    mtime = settings.source_date_epoch()
    out.parent.mkdir(parents=True, exist_ok=True)
    # a name of this packer's own, next to `out` (same file system: os.replace is atomic), so
    # two packers writing the same tarball never write into one another's file
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        # typeshed's tarfile.open lacks TarFile's copybufsize keyword; "x": never an existing file
        with tarfile.open(  # type: ignore[call-overload]
            tmp, "x", format=tarfile.PAX_FORMAT, copybufsize=8 << 20
        ) as tf:
            tf.addfile(_tarinfo(MANIFEST_NAME, len(data), mtime, 0o644), io.BytesIO(data))
            for rel in rels:
                st = (root / rel).stat()
                if st.st_size != sizes[rel]:
                    raise RuntimeError(f"pack_folder: {root / rel} changed while packing")
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                with open(root / rel, "rb") as f:
                    tf.addfile(_tarinfo(rel, st.st_size, mtime, mode), f)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    total = sum(sizes.values())
    log(f"packed {len(rels)} files ({total / 1e9:.2f} GB) from {root} into {out}")
    return out


def _is_partial(path: Path, folder: Path, prefix: str, suffix: str) -> bool:
    """Whether `path` is a packer's temp file for the tarball (`.NAME.PID.RANDOM.partial`)."""
    name = path.name
    return name.startswith(prefix) and name.endswith(suffix) and path.parent.resolve() == folder


def _tarinfo(name: str, size: int, mtime: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, mtime, mode
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def hash_files(root: Path, rels: list[str]) -> dict[str, str]:
    """sha256 of each file under `root`, a few in parallel (pack writes them, install checks)."""
    workers = max(1, min(8, os.cpu_count() or 1, len(rels)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(rels, pool.map(lambda rel: _sha256_file(root / rel), rels), strict=True))
