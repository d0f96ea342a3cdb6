"""Only a whole safetensors file enters the LoRA cache, and a broken cached file is a miss: a
truncated upload (or a file cut short on disk) is never served as a permanent cache hit."""

from __future__ import annotations

import os
import time

import pytest

from cogvx.lora import LoraCache, LoraError
from tests.support.loras import save_diffusers_lora
from tests.support.weights_server import WeightsServer


@pytest.fixture
def good(tmp_path) -> bytes:
    return save_diffusers_lora(tmp_path / "good.safetensors").read_bytes()


def test_a_truncated_file_is_refused_and_not_cached(tmp_path, good):
    """The server sends half a file with a matching Content-Length (a broken upload): the
    header names data past the end, so the download is refused; the fixed file then loads."""
    files = {"/l.safetensors": good[: len(good) // 2]}
    root = tmp_path / "cache"
    with WeightsServer(files) as srv:
        cache = LoraCache(root, min_free_bytes=0, log=lambda _: None)
        url = srv.url("/l.safetensors")
        with pytest.raises(LoraError, match=r"lora_url .* is not a readable safetensors file"):
            cache.fetch(url)
        assert cache.entries() == [] and not list(root.iterdir())  # nothing cached, no partial
        files["/l.safetensors"] = good  # the user fixes the file at the same URL
        path = cache.fetch(url)
        assert path.read_bytes() == good and srv.count("/l.safetensors") == 2


def test_a_cached_file_cut_short_is_a_miss_and_downloaded_again(tmp_path, good):
    logs: list[str] = []
    with WeightsServer({"/l.safetensors": good}) as srv:
        cache = LoraCache(tmp_path, min_free_bytes=0, log=logs.append)
        url = srv.url("/l.safetensors")
        cache.path_for(url).write_bytes(good[:-10])  # e.g. a disk that filled up long ago
        path = cache.fetch(url)
        assert path.read_bytes() == good
        assert (cache.hits, cache.downloads, srv.count("/l.safetensors")) == (0, 1, 1)
        assert any("not a complete safetensors file; refetching" in line for line in logs)
        assert cache.fetch(url) == path and cache.hits == 1  # a whole file: a hit


def test_partial_downloads_left_by_a_dead_fetch_are_removed_at_the_next_fetch(tmp_path, good):
    """A killed process leaves `.KEY.PID.partial` (and an extracted tar member) behind; files
    untouched for an hour are removed, a recent one (a live fetch's) is kept."""
    old = tmp_path / ".0123456789abcdef.999.partial"
    member = tmp_path / ".0123456789abcdef.999.partial.member"
    live = tmp_path / ".fedcba9876543210.998.partial"
    for path in (old, member, live):
        path.write_bytes(b"half a download")
    two_hours_ago = time.time() - 7200
    for path in (old, member):
        os.utime(path, (two_hours_ago, two_hours_ago))
    with WeightsServer({"/l.safetensors": good}) as srv:
        cache = LoraCache(tmp_path, min_free_bytes=0, log=lambda _: None)
        cache.fetch(srv.url("/l.safetensors"))
    assert not old.exists() and not member.exists() and live.exists()
