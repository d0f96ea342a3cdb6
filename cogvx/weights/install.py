"""Install a weight tarball (pget, else parallel HTTP ranges into GNU tar), verify, mark it.

`install_weights(source, dest)` takes an http(s) URL of a tarball, a local .tar or a local folder.
Weight URLs come from the operator (COG_WEIGHTS, COGVX_FAST_WEIGHTS), not from users: any host is
fetched (loopback and private mirrors included), but every redirect must stay http(s). User URLs
go through the same fetcher with `cogvx.net.urls`' address policy (see `cogvx.lora`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cogvx import settings
from cogvx.errors import MissingWeightsError, SetupError, WeightsError
from cogvx.net.chunks import RangeReader, file_chunks, first_span, stream_chunks
from cogvx.net.http import content_range_total, is_url, open_first
from cogvx.net.urls import safe_url
from cogvx.weights import folders
from cogvx.weights.extract import extract_stream
from cogvx.weights.folders import install_lock
from cogvx.weights.pack import hash_files
from cogvx.weights.pget import find_pget, run_pget
from cogvx.weights.space import check_space, space_guard
from cogvx.weights.tarcheck import MANIFEST_NAME, MARKER_NAME, TarChecker, parse_manifest

Log = Callable[[str], None]


def install_weights(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    connections: int = 16,
    chunk_size: int = 16 << 20,
    stall_timeout: float = 60.0,
    use_pget: bool | None = None,
    log: Log = print,
) -> Path:
    """Install the tarball at `source` (URL or .tar) into `dest` once; a folder is returned as-is.

    Returns the installed folder: `dest` is a symlink to it, swapped atomically by a reinstall,
    and the returned folder stays as it is while this process runs (see `folders`). A marker
    inside it makes later calls skip the download.
    Members are filtered like tarfile's `data` filter: no absolute paths, `..`, links out of the
    folder or device files; no owner; no setuid/setgid/sticky bits or group/other write.
    """
    if connections < 1:
        raise ValueError(f"connections must be >= 1, got {connections}")
    if chunk_size < 64 << 10:
        raise ValueError(f"chunk_size must be >= 65536 bytes, got {chunk_size}")
    if not stall_timeout > 0:
        raise ValueError(f"stall_timeout must be > 0 seconds, got {stall_timeout}")
    src = os.fspath(source)
    remote = is_url(src)
    if not remote:
        path = Path(src)
        if path.is_dir():
            return path
        if not path.is_file():
            raise WeightsError(
                f"weights source {src} does not exist (expected an http(s) URL of a tarball, "
                "a local .tar file or a local folder)"
            )
    label = safe_url(src) if remote else str(Path(src).resolve())
    identity = source_identity(src, remote)
    pget = find_pget(use_pget) if remote else None
    dest = Path(dest).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with install_lock(dest, log):
        folder = folders.current(dest)
        if folder is not None and _marker_ok(folder, label, identity, log):
            folders.hold(dest, folder)
            folders.retire(dest, folder, log)  # what the last processes left (see folders)
            log(f"weights: {dest} already holds {label}; skipping download")
            return folder
        folders.release(dest)
        folders.retire(dest, None, log)  # the stale version too, and what crashes left
        tmp = folders.new_temp(dest)
        t0 = time.monotonic()
        try:
            if pget is not None:
                run_pget(pget, src, tmp, label, stall_timeout, log, folders.held_fd(tmp))
                checker = None
            elif remote:
                checker = _download(
                    src, tmp, label, connections, chunk_size, stall_timeout, log=log
                )
            else:
                checker = _extract_local(Path(src), tmp, label, chunk_size, log)
            files = _scan_tree(tmp, label)
            if checker is not None:
                os.chmod(tmp, 0o755)  # extract_stream made it private while tar ran
            verified = _verify(tmp, files, checker, label)
            _write_marker(tmp, label, identity, files, verified, log)
            folder = folders.commit(tmp, dest)
            folders.hold(dest, folder)
        except BaseException:
            try:
                folders.discard(tmp)
            except OSError as e:  # keep the install's own error; the next install retries
                log(f"weights: could not remove {tmp} ({e})")
            raise
    seconds = time.monotonic() - t0
    size = sum(files.values())
    log(
        f"weights: installed {label} into {dest}: {len(files)} files, {size / 1e6:.0f} MB in "
        f"{seconds:.1f} s ({size / 1e6 / max(seconds, 1e-9):.0f} MB/s)"
        + (", sha256 verified" if verified else ", no manifest (sizes only)")
    )
    return folder


def source_identity(src: str, remote: bool) -> str:
    """What must match for an installed folder to count as this source: a local tarball's size
    and mtime; for a URL its address without the query (signed URLs rotate their tokens, so
    publish changed weights at a new path)."""
    if remote:
        return "url:" + safe_url(src)
    st = os.stat(src)
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def _marker_ok(dest: Path, label: str, identity: str, log: Log) -> bool:
    if not dest.exists() and not dest.is_symlink():
        return False
    try:
        marker = json.loads((dest / MARKER_NAME).read_text())
        files = marker["files"]
        source = marker["source"]
        installed_identity = marker.get("identity")
    except FileNotFoundError:
        log(f"weights: {dest} exists without {MARKER_NAME} (half-installed?); reinstalling")
        return False
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"weights: unreadable {MARKER_NAME} in {dest} ({e}); reinstalling")
        return False
    if source != label:
        log(f"weights: {dest} holds {source}, not {label}; reinstalling")
        return False
    if installed_identity != identity:
        log(f"weights: {dest} holds another version of {label} (size or mtime); reinstalling")
        return False
    for rel, size in files.items():
        try:
            st = os.stat(dest / rel)
        except OSError:
            log(f"weights: {dest / rel} is missing; reinstalling")
            return False
        if st.st_size != size:
            log(f"weights: {dest / rel} has {st.st_size} bytes, expected {size}; reinstalling")
            return False
    return True


def _download(
    url: str,
    tmp: Path,
    label: str,
    connections: int,
    chunk_size: int,
    stall_timeout: float,
    *,
    log: Log,
) -> TarChecker:
    first = first_span(chunk_size, connections)
    target, conn, resp = open_first(url, first, stall_timeout, log)
    total: int | None
    chunks: Iterable[memoryview]
    try:
        if resp.status == 206:
            total = content_range_total(resp, label)
            check_space(total, tmp.parent, label)
            chunks = RangeReader(
                target,
                total,
                chunk_size=chunk_size,
                connections=connections,
                timeout=stall_timeout,
                first=(conn, resp),
            )
            log(
                f"weights: downloading {label} ({total / 1e6:.0f} MB) over {chunks.threads} "
                f"connections into {tmp.parent}"
            )
        else:
            total = resp.length  # http.client's parse of Content-Length (None: not sent)
            if total is not None:
                check_space(total, tmp.parent, label)
            log(f"weights: {label} ignores Range requests; streaming it over one connection")
            chunks = stream_chunks(
                resp.readinto,
                chunk_size=chunk_size,
                expected=total,
                label=label,
                close=lambda: _shutdown(conn),
                timeout=stall_timeout,
            )
    except BaseException:
        conn.close()
        raise
    guard = space_guard(tmp.parent, label, checked=total is not None)
    try:
        return extract_stream(chunks, tmp, label=label, total=total, log=log, guard=guard)
    finally:
        conn.close()


def _shutdown(conn: http.client.HTTPConnection) -> None:
    if conn.sock is not None:
        conn.sock.shutdown(socket.SHUT_RDWR)


def _extract_local(path: Path, tmp: Path, label: str, chunk_size: int, log: Log) -> TarChecker:
    size = path.stat().st_size
    check_space(size, tmp.parent, label)
    log(f"weights: extracting {label} ({size / 1e6:.0f} MB) into {tmp.parent}")
    with open(path, "rb", buffering=0) as f:
        chunks = file_chunks(f, chunk_size=chunk_size, label=label)
        guard = space_guard(tmp.parent, label, checked=True)
        return extract_stream(chunks, tmp, label=label, total=size, log=log, guard=guard)


def data_mode(mode: int, is_dir: bool) -> int:
    """Permission bits without what tarfile's `data` filter drops: setuid/setgid/sticky, group and
    other write, and (files) x bits when the owner has none. Folders stay owner-rwx, so the
    cache can always replace them; other bits are only ever removed."""
    mode &= 0o755
    if is_dir:
        mode |= 0o700
    elif not mode & 0o100:
        mode &= ~0o111
    return mode


def _filter_mode(path: str, st: os.stat_result, label: str, rel: str) -> None:
    want = data_mode(stat.S_IMODE(st.st_mode), stat.S_ISDIR(st.st_mode))
    if stat.S_IMODE(st.st_mode) != want:
        try:
            os.chmod(path, want)
        except OSError as e:
            raise WeightsError(f"{label}: cannot set the mode of {rel} to {want:o}: {e}") from e


def _scan_tree(root: Path, label: str) -> dict[str, int]:
    """Regular files under root -> size; refuse links leading outside and special files.

    Also sets every file's and folder's mode to `data_mode` (links are left alone).
    """
    base = os.path.realpath(root)
    files = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                _filter_mode(full, st, label, rel)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(full)
                if real != base and not real.startswith(base + os.sep):
                    raise WeightsError(
                        f"{label}: symbolic link {rel} -> {os.readlink(full)} points outside "
                        "the weights folder"
                    )
            elif stat.S_ISREG(st.st_mode):
                if rel != MARKER_NAME:
                    files[rel] = st.st_size
            elif not stat.S_ISDIR(st.st_mode):
                raise WeightsError(f"{label}: {rel} is not a regular file, folder or link")
    return files


def _verify(root: Path, files: dict[str, int], checker: TarChecker | None, label: str) -> bool:
    """Check files against the manifest when there is one; True when sha256 was verified."""
    streamed = checker is not None and checker.manifest is not None
    if streamed:
        assert checker is not None and checker.manifest is not None
        manifest = checker.manifest
    elif (root / MANIFEST_NAME).is_file():  # pget's tree, or a manifest that was not first
        manifest = parse_manifest((root / MANIFEST_NAME).read_bytes(), label)
    else:
        if checker is not None:
            _match_members(files, checker, label)
        return False
    expected: dict[str, dict[str, Any]] = manifest["files"]
    for rel, info in expected.items():
        if rel not in files:
            raise WeightsError(f"{label}: {rel} is listed in the manifest but missing")
        if files[rel] != info["size"]:
            raise WeightsError(
                f"{label}: {rel} has {files[rel]} bytes, the manifest says {info['size']} "
                "(truncated or modified tarball)"
            )
    extra = sorted(set(files) - set(expected) - {MANIFEST_NAME})
    if extra:
        raise WeightsError(f"{label}: files not listed in the manifest: {', '.join(extra[:5])}")
    if streamed:
        assert checker is not None
        digests: Mapping[str, str | None] = {
            name: sha for name, (_, sha) in checker.digests().items()
        }
    else:
        digests = hash_files(root, sorted(expected))
    for rel, info in expected.items():
        if digests.get(rel) != info["sha256"]:
            raise WeightsError(
                f"{label}: sha256 mismatch for {rel} (manifest {info['sha256'][:16]}..., "
                f"got {str(digests.get(rel))[:16]}...): corrupt download or modified tarball"
            )
    return True


def _match_members(files: dict[str, int], checker: TarChecker, label: str) -> None:
    """Without a manifest: the extracted tree must hold exactly the tar's files, at their sizes
    (tar options from the environment, or a tar that skipped a member, would change it)."""
    members = {name: size for name, (size, _) in checker.files.items()}
    for rel, size in sorted(members.items()):
        if files.get(rel) != size:
            got = "missing" if rel not in files else f"{files[rel]} bytes"
            raise WeightsError(
                f"{label}: {rel} is {size} bytes in the tarball but {got} after extraction"
            )
    extra = sorted(set(files) - set(members))
    if extra:
        raise WeightsError(f"{label}: files not in the tarball appeared: {', '.join(extra[:5])}")


def _write_marker(
    root: Path, label: str, identity: str, files: dict[str, int], verified: bool, log: Log
) -> None:
    marker = {
        "format": 1,
        "source": label,
        "identity": identity,
        "sha256_verified": verified,
        "bytes": sum(files.values()),
        "files": files,
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        (root / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True))
    except OSError as e:  # pget's cache shim can hand back a read-only folder
        log(f"weights: could not write {MARKER_NAME} in {root} ({e}); it will be checked again")


def install_model(source: str | None, name: str, missing: str, log: Log = print) -> Path:
    """Install (or reuse) a model's weights under `<weights cache>/<name>`; return the folder.

    No source raises MissingWeightsError with `missing` (how to provide the weights)."""
    if not source:
        raise MissingWeightsError(missing)
    return Path(install_weights(source, settings.weights_cache_root() / name, log=log))


def find_weights_root(
    folder: Path,
    is_root: Callable[[Path], bool],
    not_found: str,
    error: type[SetupError] = SetupError,
) -> Path:
    """`folder`, or the first folder one or two levels below it where `is_root` holds (tarballs
    may wrap their files in folders); else `error(not_found)`."""
    for depth in range(3):
        if depth == 0:
            roots = [folder]
        else:
            roots = sorted(p for p in folder.glob("/".join(["*"] * depth)) if p.is_dir())
        for root in roots:
            if is_root(root):
                return root
    raise error(not_found)
