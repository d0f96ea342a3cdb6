"""The address policy for user URLs (cogvx.net.urls) as a table, then through the real fetcher.

No test here sends a packet beyond loopback: host names go through a resolver stub, and a
tripwire on socket.getaddrinfo fails any test that would ask the system resolver for a name.
"""

from __future__ import annotations

import socket

import pytest

from cogvx.lora import LoraCache, LoraError
from cogvx.net import http as net_http
from cogvx.net.urls import (
    ALLOW_PRIVATE_ENV,
    AddressRefused,
    UrlError,
    UrlPolicy,
    address_problem,
    fetch_failed,
    literal_ip,
    safe_url,
    split_url,
    user_url_policy,
)
from tests.support.weights_server import WeightsServer

MIRROR = ("mirror.internal", None)
PUBLIC = "93.184.215.14"  # returned by the stub only; never connected to (refused or not used)
NAMES = {
    "lora.example": [PUBLIC],
    "dual.example": [PUBLIC, "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "rebind.example": [PUBLIC, "127.0.0.1"],  # one bad answer refuses the name
    "internal.example": ["10.0.0.5"],
    "v6-loop.example": ["::1"],
    "metadata.example": ["169.254.169.254"],
    "localhost.": ["127.0.0.1"],
}


def stub_resolver(host: str, port: int) -> list[str]:
    """A resolver that knows NAMES and nothing else (no network)."""
    if host not in NAMES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return list(NAMES[host])


@pytest.fixture(autouse=True)
def no_dns(monkeypatch):
    """Fail a test that would send a DNS query (only numeric hosts and localhost resolve)."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in (None, "localhost") and literal_ip(str(host)) is None:
            raise AssertionError(f"test tried to resolve {host!r} through the system resolver")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


# (URL, why it is refused by default or None when allowed). With the opt-in, all are allowed.
TABLE = [
    ("http://127.0.0.1:8080/secret", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://2130706433/", "loopback"),  # decimal
    ("http://0x7f.1/", "loopback"),  # hex, two parts
    ("http://0x7f000001/", "loopback"),
    ("http://017700000001/", "loopback"),  # octal
    ("http://0177.0.0.1/", "loopback"),
    ("http://localhost./", "loopback"),  # a name (the stub resolves it)
    ("http://0.0.0.0/", "'this network'"),
    ("http://0/", "'this network'"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://169.254.169.254/latest/meta-data/", "link-local (cloud metadata)"),
    ("http://224.0.0.1/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.1/", "documentation"),
    ("http://[::1]:8080/", "loopback"),
    ("http://[::]/", "unspecified"),
    ("http://[::ffff:127.0.0.1]/", "loopback (as IPv6"),
    ("http://[::ffff:7f00:1]/", "loopback (as IPv6"),
    ("http://[::ffff:169.254.169.254]/", "link-local (cloud metadata) (as IPv6"),
    ("http://[64:ff9b::a9fe:a9fe]/", "link-local (cloud metadata) (as IPv6"),  # NAT64
    ("http://[64:ff9b:1::1]/", "local-use NAT64"),
    ("http://[::127.0.0.1]/", "IPv4-compatible"),
    ("http://[2002:7f00:1::1]/", "6to4 tunnel"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo tunnel"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[fd12:3456::1]/", "unique local (private)"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[100::1]/", "discard-only"),
    ("http://[2001:db8::1]/", "documentation"),
    ("http://[4000::1]/", "not a global unicast"),
    ("http://internal.example/x", "private"),
    ("http://v6-loop.example/x", "loopback"),
    ("http://metadata.example/x", "link-local (cloud metadata)"),
    ("http://rebind.example/x", "loopback"),
    ("https://8.8.8.8/x", None),
    ("https://0x08080808/x", None),  # 8.8.8.8 in hex
    ("https://[2606:4700:4700::1111]/x", None),
    ("https://[::ffff:8.8.8.8]/x", None),
    ("https://[64:ff9b::808:808]/x", None),  # NAT64 of a public address
    ("https://lora.example/x.safetensors?token=1", None),
    ("https://dual.example/x", None),
]


@pytest.mark.parametrize(("url", "why"), TABLE)
def test_address_policy_table(url, why):
    off = UrlPolicy("lora_url", resolver=stub_resolver)
    on = UrlPolicy("lora_url", allow_private=True, resolver=stub_resolver)
    split = split_url(url, "lora_url")
    if why is None:
        assert off.addresses(split)
    else:
        with pytest.raises(AddressRefused, match="^lora_url ") as err:
            off.addresses(split)
        assert why in str(err.value)
        assert "token" not in str(err.value)
    assert on.addresses(split)  # the opt-in allows every address


def test_checked_addresses_are_the_ones_connected_to_in_order():
    policy = UrlPolicy("lora_url", resolver=stub_resolver)
    assert policy.addresses(split_url("https://dual.example/", "x")) == tuple(NAMES["dual.example"])
    assert UrlPolicy(allow_private=True).addresses(split_url("http://0x7f.1/", "x")) == (
        "127.0.0.1",
    )
    with pytest.raises(AddressRefused, match="cannot resolve"):
        policy.addresses(split_url("https://nx.example/", "lora_url"))


def test_allow_list_names_hosts_and_ports():
    hosts = frozenset({("127.0.0.1", 8123), ("mirror.internal", None)})
    resolver = {"mirror.internal": ["10.1.1.1"]}.__getitem__
    policy = UrlPolicy("lora_url", allowed_hosts=hosts, resolver=lambda h, p: resolver(h))
    assert policy.addresses(split_url("http://127.0.0.1:8123/a", "x")) == ("127.0.0.1",)
    assert policy.addresses(split_url("http://mirror.internal:9/a", "x")) == ("10.1.1.1",)
    for url in ("http://127.0.0.1:8124/a", "http://127.0.0.1/a", "http://0x7f.1:8123/a"):
        with pytest.raises(AddressRefused, match="loopback"):
            policy.addresses(split_url(url, "x"))


@pytest.mark.parametrize(
    ("value", "private", "hosts"),
    [
        (None, False, set()),
        ("", False, set()),
        ("0", False, set()),
        ("off", False, set()),
        ("1", True, set()),
        ("true", True, set()),
        ("127.0.0.1:8123, Mirror.Internal", False, {("127.0.0.1", 8123), MIRROR}),
        ("[::1]:99", False, {("::1", 99)}),
    ],
)
def test_the_opt_in_is_read_from_one_setting(monkeypatch, value, private, hosts):
    if value is None:
        monkeypatch.delenv(ALLOW_PRIVATE_ENV, raising=False)
    else:
        monkeypatch.setenv(ALLOW_PRIVATE_ENV, value)
    policy = user_url_policy("lora_url")
    assert (policy.allow_private, set(policy.allowed_hosts)) == (private, hosts)


def test_a_bad_opt_in_value_names_the_setting(monkeypatch):
    monkeypatch.setenv(ALLOW_PRIVATE_ENV, "http://host/path")
    with pytest.raises(ValueError, match=ALLOW_PRIVATE_ENV):
        user_url_policy("lora_url")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:99999/x", "the port is not a number from 1 to 65535"),
        ("http://127.0.0.1:0/x", "the port is not a number from 1 to 65535"),
        ("http://127.0.0.1:-1/x", "the port is not a number from 1 to 65535"),
        ("http://[::1/x", "invalid IPv6 address in brackets"),
        ("http://[lora.example]/x", "invalid IPv6 address in brackets"),
        ("file:///etc/passwd", "only http:// and https:// URLs are fetched"),
        ("gopher://127.0.0.1:6379/_INFO", "only http:// and https:// URLs are fetched"),
        ("http:///x", "the URL has no host"),
        ("http://host/a b", "spaces, control or non-ASCII"),
        ("http://host/a\r\nX-Injected: 1", "spaces, control or non-ASCII"),
        ("http://h\u00f6st/a", "spaces, control or non-ASCII"),
        ("http://host/" + "a" * 1_000_000, "the URL is too long"),
    ],
)
def test_malformed_urls_name_the_input_with_a_bounded_prefix(url, message):
    with pytest.raises(UrlError) as err:
        split_url(url, "lora_url")
    text = str(err.value)
    assert text.startswith("lora_url ") and message in text
    assert len(text) < 400 and "\n" not in text


def test_safe_url_strips_secrets_bounds_and_never_raises():
    assert safe_url("https://u:pw@host:8443/a/b.tar?X-Amz-Signature=s#frag") == (
        "https://host:8443/a/b.tar"
    )
    long = safe_url("http://host/" + "a" * 1_000_000 + "?token=secret")
    assert len(long) < 230 and long.endswith("… (1000012 chars)") and "secret" not in long
    assert safe_url("http://[::1:99999/x\n") == "http://[::1:99999/x\\n"
    assert address_problem(literal_ip("93.184.215.14")) is None


# --- through the real fetcher, on loopback --------------------------------------------------


@pytest.fixture
def two_servers():
    """An 'allowed' server (on the allow-list) and an 'internal' one holding a secret."""
    with WeightsServer({"/secret": b"INTERNAL-SECRET-" * 64}) as internal:
        with WeightsServer({}, redirects={}) as allowed:
            yield allowed, internal


def _cache(tmp_path, policy: UrlPolicy) -> LoraCache:
    return LoraCache(tmp_path / "loras", min_free_bytes=0, log=lambda _: None, policy=policy)


def test_a_redirect_to_an_internal_address_is_refused_before_connecting(tmp_path, two_servers):
    allowed, internal = two_servers
    allowed.redirects["/lora.safetensors"] = internal.url("/secret")
    allowed.redirects["/hop"] = allowed.url("/lora.safetensors")  # a chain: allowed, then out
    policy = UrlPolicy("lora_url", allowed_hosts=frozenset({("127.0.0.1", allowed.port)}))
    for path in ("/lora.safetensors", "/hop"):
        url = allowed.url(path) + "?sig=s"
        with pytest.raises(LoraError) as err:
            _cache(tmp_path, policy).fetch(url)
        assert str(err.value) == fetch_failed("lora_url", url)
    assert allowed.count("/lora.safetensors") == 2 and allowed.count("/hop") == 1
    assert internal.requests == []  # the internal server never saw a request


def test_every_way_of_failing_gives_the_same_message(tmp_path, two_servers, monkeypatch):
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    allowed, internal = two_servers
    allowed.statuses.update({"/gone": 404, "/denied": 403, "/broken": 500})
    allowed.redirects["/to-file"] = "file:///etc/passwd"
    closed = f"http://127.0.0.1:{_closed_port()}/x"
    on = UrlPolicy("lora_url", allow_private=True)
    off = UrlPolicy("lora_url")
    cases = [
        (off, internal.url("/secret")),  # refused address
        (off, "http://169.254.169.254/latest/meta-data/"),  # refused, never connected
        (off, closed),
        (on, closed),  # connection refused
        (on, allowed.url("/gone")),
        (on, allowed.url("/denied")),
        (on, allowed.url("/broken")),
        (on, allowed.url("/to-file")),
    ]
    for policy, url in cases:
        with pytest.raises(LoraError) as err:
            _cache(tmp_path, policy).fetch(url)
        assert str(err.value) == fetch_failed("lora_url", url), url
    assert internal.requests == []
    assert allowed.count("/to-file") == 1  # refused at once, not retried


def test_a_malformed_redirect_gives_the_same_message(tmp_path, two_servers):
    allowed, _ = two_servers
    allowed.redirects["/bad-hop"] = "http://[::1/x"  # urljoin raises ValueError on it
    url = allowed.url("/bad-hop")
    with pytest.raises(LoraError) as err:
        _cache(tmp_path, UrlPolicy("lora_url", allow_private=True)).fetch(url)
    assert str(err.value) == fetch_failed("lora_url", url)
    assert allowed.count("/bad-hop") == 1  # refused at once, not retried


@pytest.mark.parametrize(
    ("url", "port"),
    [("https://[2606:4700:4700::abcd]/x", 443), ("http://[2606:4700:4700::1111]/x", 80)],
)
def test_an_ipv6_url_without_a_port_goes_to_the_default_port(tmp_path, monkeypatch, url, port):
    """http.client would take the last group for a port (1111) or refuse it (abcd) raw."""
    monkeypatch.setattr(net_http, "BACKOFF_S", 0.001)
    tried: list[tuple[str, int]] = []

    def refuse(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        tried.append(address)  # no packet leaves: every connection is refused here
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(LoraError) as err:
        _cache(tmp_path, UrlPolicy("lora_url")).fetch(url)
    assert str(err.value) == fetch_failed("lora_url", url)
    host = url.split("[", 1)[1].split("]", 1)[0]
    assert tried == [(host, port)] * (net_http.RETRIES + 1)


def test_the_checked_address_is_connected_to_without_a_second_lookup(tmp_path, lora_bytes):
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.9.9.9"]  # a rebinding resolver

    with WeightsServer({"/a.safetensors": lora_bytes}) as srv:
        hosts = frozenset({("lora.example", srv.port)})
        policy = UrlPolicy("lora_url", allowed_hosts=hosts, resolver=resolver)
        path = _cache(tmp_path, policy).fetch(f"http://lora.example:{srv.port}/a.safetensors")
        assert path.read_bytes() == lora_bytes
    assert calls == ["lora.example"]  # once; the no_dns tripwire proves http.client did not


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again once the socket is


def test_https_goes_to_the_checked_address_and_verifies_the_host_name(
    tmp_path, tls, lora_bytes, monkeypatch
):
    ctx, cert = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate
    resolver = {"lora.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]}
    with WeightsServer({"/a.safetensors": lora_bytes}, tls=ctx) as srv:
        hosts = frozenset({("lora.example", srv.port), ("other.example", srv.port)})
        policy = UrlPolicy("lora_url", allowed_hosts=hosts, resolver=lambda h, p: resolver[h])
        path = _cache(tmp_path, policy).fetch(f"https://lora.example:{srv.port}/a.safetensors")
        assert path.read_bytes() == lora_bytes
        wrong = f"https://other.example:{srv.port}/a.safetensors"  # same address, wrong name
        with pytest.raises(LoraError) as err:
            _cache(tmp_path / "2", policy).fetch(wrong)
        assert str(err.value) == fetch_failed("lora_url", wrong)
        assert srv.count("/a.safetensors") == 1  # the certificate check failed before a request
