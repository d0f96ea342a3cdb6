"""The LoRA download cache: files on disk keyed by URL, least recently used evicted first."""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from cogvx import settings
from cogvx.errors import LoraError, WeightsError
from cogvx.log import clip
from cogvx.lora.files import extract_safetensors
from cogvx.lora.sources import hf_endpoint, parse_source, pick_repo_file
from cogvx.net.http import Deadline, DeadlineExceeded, TimedBody, content_range, open_first
from cogvx.net.urls import UrlPolicy, fetch_failed, safe_url, user_url_policy
from cogvx.settings import LORA_MAX_BYTES_ENV
from cogvx.weights.tensors import safetensors_header

Log = Callable[[str], None]

STALL_TIMEOUT = 60.0  # one read may wait this long
# One LoRA download as a whole (redirects, retries, every read): DEADLINE_S per DEADLINE_BYTES of
# the size cap, DEADLINE_S at least (600 s for the default 2 GiB: 3.6 MB/s for the largest file).
DEADLINE_S = 600.0
DEADLINE_BYTES = 2 << 30
LISTING_DEADLINE_S = 120.0  # a Hugging Face file listing as a whole
MAX_LISTING = 4 << 20  # bytes of a Hugging Face file listing read at most
STALE_PARTIAL_S = 3600.0  # a partial download untouched this long belongs to a dead fetch


class LoraCache:
    """LoRA files on disk keyed by sha256(URL)[:16]; least recently used ones are evicted first.

    Recency is the file's mtime (touched on every hit), so the order survives restarts.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        min_free_bytes: int | None = None,
        max_bytes: int | None = None,
        free_bytes: Callable[[], int] | None = None,
        log: Log = print,
        policy: UrlPolicy | None = None,
    ):
        self.root = Path(root) if root else settings.lora_cache_dir()
        self.min_free = (
            min_free_bytes if min_free_bytes is not None else settings.lora_min_free_bytes()
        )
        if max_bytes is None:
            max_bytes = settings.lora_max_bytes()
        self.max_bytes = max_bytes
        self._free = free_bytes or (lambda: shutil.disk_usage(self.root).free)
        self.log = log
        self.policy = policy or user_url_policy("lora_url")  # which addresses URLs may reach
        self.hits = self.downloads = self.evictions = 0
        self._repo_files: dict[tuple[str, str], str] = {}

    def path_for(self, url: str) -> Path:
        """Where the file for `url` lives (whether or not it is there)."""
        return self.root / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.safetensors"

    def entries(self) -> list[Path]:
        """Cached files, least recently used first."""
        if not self.root.is_dir():
            return []
        return sorted(self.root.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)

    def resolve(self, source: str) -> str:
        """The download URL of a `lora_url` value (a Hub repo without a file name: its listing)."""
        parsed = parse_source(source)
        if parsed.repo is None:
            return parsed.url
        return self.find_repo_file(parsed.repo, parsed.rev)

    def fetch(self, url: str) -> Path:
        """The cached file for `url`, downloading (and evicting old entries) on a miss."""
        path = self.path_for(url)
        label = clip(safe_url(url))
        if path.is_file():
            if _complete(path):
                os.utime(path)
                self.hits += 1
                self.log(f"lora: cache hit for {label}")
                return path
            path.unlink(missing_ok=True)  # truncated or corrupt: a miss, downloaded again
            self.log(
                f"lora: cached file for {label} is not a complete safetensors file; refetching"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_stale_partials()
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial")
        try:
            t0 = time.monotonic()
            size = self._download(url, tmp, label, keep=path)
            room = functools.partial(self.make_room, keep=path)
            extract_safetensors(tmp, label, self.max_bytes, room=room)
            # only a whole file enters the cache (a header naming data past the end is refused)
            safetensors_header(tmp, f"lora_url {label}", LoraError)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.downloads += 1
        self.log(f"lora: downloaded {label} ({size / 1e6:.1f} MB) in {time.monotonic() - t0:.1f}s")
        return path

    def clean_stale_partials(self, older_than: float = STALE_PARTIAL_S) -> int:
        """Delete partial downloads (and extracted tar members) untouched for `older_than`
        seconds: a crashed or killed fetch leaves them; a live one writes to its file at least
        every STALL_TIMEOUT. Returns how many were removed."""
        removed = 0
        cutoff = time.time() - older_than
        for old in [*self.root.glob(".*.partial"), *self.root.glob(".*.partial.member")]:
            try:
                if old.stat().st_mtime < cutoff:
                    old.unlink()
                    removed += 1
            except FileNotFoundError:  # another process cleaned it or finished with it
                continue
        if removed:
            self.log(f"lora: removed {removed} stale partial download(s) from {self.root}")
        return removed

    def find_repo_file(self, repo: str, rev: str) -> str:
        """The download URL of a Hugging Face repo's LoRA file, from the Hub's file listing:
        `pytorch_lora_weights.safetensors`, else the repo's one .safetensors (memoized)."""
        key = (repo, rev)
        if key not in self._repo_files:
            api = f"{hf_endpoint()}/api/models/{repo}/revision/{rev}"
            failed = LoraError(fetch_failed("lora_url", f"{hf_endpoint()}/{repo}"))
            with Deadline("lora_url", f"{hf_endpoint()}/{repo}", LISTING_DEADLINE_S) as deadline:
                body = self._read_listing(api, failed, deadline)
            try:
                listing = json.loads(body)
                files = [str(s["rfilename"]) for s in listing["siblings"]]
            except (ValueError, KeyError, TypeError):
                raise failed from None
            name = pick_repo_file(files, repo)
            self._repo_files[key] = f"{hf_endpoint()}/{repo}/resolve/{rev}/{name}"
            self.log(f"lora: {repo} holds {clip(name, 80)}")
        return self._repo_files[key]

    def _read_listing(self, api: str, failed: LoraError, deadline: Deadline) -> bytes:
        """The listing's bytes (MAX_LISTING and a little more at most), under `deadline`."""
        try:
            _, conn, resp = open_first(
                api, MAX_LISTING, STALL_TIMEOUT, self.log, policy=self.policy, deadline=deadline
            )
        except WeightsError:
            raise failed from None
        except DeadlineExceeded as e:
            raise LoraError(str(e)) from None
        try:
            body = b""
            while (chunk := _read(deadline.body(resp), failed)) and len(body) <= MAX_LISTING:
                body += chunk
        finally:
            conn.close()
        return body

    def deadline_s(self) -> float:
        """Seconds one download may take as a whole: DEADLINE_S per DEADLINE_BYTES of the cap."""
        return DEADLINE_S * max(1.0, self.max_bytes / DEADLINE_BYTES)

    def make_room(self, need: int, keep: Path | None = None) -> None:
        """Evict least recently used files until `need` bytes fit above the free-space floor."""
        for old in self.entries():
            if self._free() - need >= self.min_free:
                return
            if old == keep:
                continue
            size = old.stat().st_size
            old.unlink(missing_ok=True)
            self.evictions += 1
            self.log(f"lora: evicted {old.name} ({size / 1e6:.1f} MB) to keep disk space free")
        if self._free() < need:
            raise LoraError(
                f"not enough disk space for a {need / 1e6:.0f} MB LoRA in {self.root} "
                f"({self._free() / 1e6:.0f} MB free)"
            )

    def _download(self, url: str, dest: Path, label: str, keep: Path) -> int:
        """Fetch `url` into `dest`. Every network failure gives the same `fetch_failed` message
        (no port-scan oracle) and response bytes are never quoted; a download that takes longer
        than `deadline_s()` as a whole says so."""
        with Deadline("lora_url", url, self.deadline_s()) as deadline:
            try:
                return self._download_within(url, dest, label, keep, deadline)
            except DeadlineExceeded as e:
                raise LoraError(str(e)) from None

    def _download_within(
        self, url: str, dest: Path, label: str, keep: Path, deadline: Deadline
    ) -> int:
        failed = LoraError(fetch_failed("lora_url", url))
        try:
            _, conn, resp = open_first(
                url,
                self.max_bytes + 1,
                STALL_TIMEOUT,
                self.log,
                policy=self.policy,
                deadline=deadline,
            )
        except WeightsError:
            raise failed from None
        body = deadline.body(resp)
        total: int | None
        try:
            if resp.status == 206:
                end, total = content_range(resp, label)
                if total <= self.max_bytes and end + 1 != total:
                    raise LoraError(f"lora_url {label}: the server sent a partial range")
            else:
                total = resp.length  # http.client's parse of Content-Length (None: not sent)
            if total is not None and total > self.max_bytes:
                raise LoraError(self._too_big(label, total))
            self.make_room(total or 0, keep=keep)
            got = 0
            with open(dest, "wb") as f:
                while chunk := _read(body, failed):
                    got += len(chunk)
                    if got > self.max_bytes:
                        raise LoraError(self._too_big(label, got, at_least=True))
                    if total is None and got % (64 << 20) < len(chunk):
                        self.make_room(64 << 20, keep=keep)  # no size was sent: keep checking
                    f.write(chunk)
        except WeightsError:  # a bad Content-Range
            raise failed from None
        finally:
            conn.close()
        if total is not None and got != total:
            raise LoraError(f"lora_url {label}: download truncated ({got} of {total} bytes)")
        return got

    def _too_big(self, label: str, size: int, at_least: bool = False) -> str:
        return (
            f"lora_url {label}: the file is {'over ' if at_least else ''}{size / 1e6:.0f} MB; "
            f"LoRAs up to {self.max_bytes / 1e6:.0f} MB are accepted ({LORA_MAX_BYTES_ENV})"
        )


def _complete(path: Path) -> bool:
    """Whether `path` is a whole safetensors file: its header parses and its tensors' data
    offsets cover the file exactly (safetensors checks both when opening it)."""
    try:
        safetensors_header(path, error=LoraError)
    except LoraError:
        return False
    return True


def _read(body: TimedBody, failed: LoraError) -> bytes:
    """The next MiB of the body; a network error, stall or unreadable framing raises `failed`,
    the deadline passing a LoraError that says so."""
    try:
        return body.read(1 << 20)
    except DeadlineExceeded as e:
        raise LoraError(str(e)) from None
    except (OSError, http.client.HTTPException, ValueError):
        raise failed from None
