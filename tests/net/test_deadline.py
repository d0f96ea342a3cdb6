"""User downloads stop at one overall deadline per URL; their timeouts and addresses are bounded.

The servers trickle a byte every 50 ms (far inside the 60 s read timeout), so only the overall
deadline can stop them; the tests shrink it through the module constant.
"""

from __future__ import annotations

import socket
import time

import pytest

from cogvx.errors import WeightsError
from cogvx.lora import LoraCache, LoraError
from cogvx.lora import cache as lora_cache
from cogvx.net import http as net_http
from cogvx.net.urls import UrlPolicy, fetch_failed
from tests.net.slow_server import SlowServer

ON = UrlPolicy("lora_url", allow_private=True)


def _cache(tmp_path, policy: UrlPolicy = ON) -> LoraCache:
    return LoraCache(tmp_path / "loras", min_free_bytes=0, log=lambda _: None, policy=policy)


def _took_longer(url: str, seconds: str) -> str:
    return (
        f"lora_url {url}: the download took longer than {seconds} s (the limit for one file); "
        "give a faster host or a smaller file"
    )


@pytest.mark.parametrize("mode", ["body", "headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(lora_cache, "DEADLINE_S", 0.5)
    with SlowServer(mode) as srv:
        with pytest.raises(LoraError) as err:
            _cache(tmp_path).fetch(srv.url("/lora.safetensors") + "?sig=SECRET")
        assert srv.connections == 1  # the deadline is not retried
    assert str(err.value) == _took_longer(srv.url("/lora.safetensors"), "0.5")
    assert list((tmp_path / "loras").iterdir()) == []  # the partial file is gone


def test_a_trickling_https_server_is_cut_off_too(tmp_path, tls, monkeypatch):
    ctx, cert = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    monkeypatch.setattr(lora_cache, "DEADLINE_S", 0.5)
    with SlowServer("body", tls=ctx) as srv:
        hosts = frozenset({("lora.example", srv.port)})
        policy = UrlPolicy("lora_url", allowed_hosts=hosts, resolver=lambda h, p: ["127.0.0.1"])
        url = srv.url("/lora.safetensors", host="lora.example")
        with pytest.raises(LoraError) as err:
            _cache(tmp_path, policy).fetch(url)
    assert str(err.value) == _took_longer(url, "0.5")


def test_the_deadline_scales_with_the_size_cap(tmp_path):
    assert _cache(tmp_path).deadline_s() == lora_cache.DEADLINE_S  # the default 2 GiB cap
    big = LoraCache(tmp_path, min_free_bytes=0, max_bytes=8 << 30, policy=ON)
    assert big.deadline_s() == 4 * lora_cache.DEADLINE_S


def _connections_settle(srv: SlowServer, at_least: int) -> int:
    end = time.monotonic() + 5  # the accept thread may lag the client on a busy machine
    while srv.connections < at_least and time.monotonic() < end:
        time.sleep(0.01)
    return srv.connections


def test_a_timeout_against_a_user_url_is_retried_once(tmp_path, monkeypatch):
    monkeypatch.setattr(lora_cache, "STALL_TIMEOUT", 0.2)
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    with SlowServer("silent") as srv:
        url = srv.url("/lora.safetensors")
        with pytest.raises(LoraError) as err:
            _cache(tmp_path).fetch(url)
        assert _connections_settle(srv, 2) == 2
    assert str(err.value) == fetch_failed("lora_url", url)  # a timeout is not the deadline


def test_operator_urls_keep_every_retry(monkeypatch):
    """Weight downloads (no policy, no deadline) share open_first: their retries are unchanged."""
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    with SlowServer("silent") as srv:
        with pytest.raises(WeightsError, match="no data for 0.2 s"):
            net_http.open_first(srv.url("/w.tar"), 1, 0.2, lambda _: None)
        assert _connections_settle(srv, net_http.RETRIES + 1) == net_http.RETRIES + 1


def test_at_most_four_addresses_are_tried_each_within_the_deadline(tmp_path, monkeypatch):
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    monkeypatch.setattr(lora_cache, "DEADLINE_S", 30.0)  # under the 60 s connect timeout
    addresses = [f"93.184.215.{i}" for i in range(1, 7)]  # never connected to: refused below
    tried: list[tuple[str, float]] = []

    def refuse(address: tuple[str, int], timeout: float, *args: object, **kw: object) -> None:
        tried.append((address[0], timeout))
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    policy = UrlPolicy("lora_url", resolver=lambda h, p: list(addresses))
    url = "https://many.example/x.safetensors"
    with pytest.raises(LoraError) as err:
        _cache(tmp_path, policy).fetch(url)
    assert str(err.value) == fetch_failed("lora_url", url)
    assert [a for a, _ in tried] == addresses[:4] * (net_http.RETRIES + 1)
    assert all(0 < t <= 30.0 for _, t in tried)  # each connect wait cut to the time left
