"""HTTP for every fetch: pinned connections to checked addresses, redirects, retries."""

from __future__ import annotations

import contextlib
import errno
import http.client
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from cogvx.errors import WeightsError
from cogvx.log import clip
from cogvx.net.urls import UrlError, UrlPolicy, safe_url, split_url

RETRIES = 5  # attempts per chunk after the first one
BACKOFF_S = 0.25  # first retry delay; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
MAX_REDIRECTS = 10
PIECE = 1 << 20  # socket reads per call: a dropped connection loses at most this much
RAMP_MIN = 64 << 10  # smallest chunk of the ramp-up
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
_FIRST_RANGE = re.compile(r"bytes 0+-([0-9]{1,19})/([0-9]{1,19})")  # sizes below 10**19 bytes

Log = Callable[[str], None]


def is_url(source: str) -> bool:
    """True for http(s) URLs."""
    return source.startswith(("http://", "https://"))


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to checked addresses (tried in order), not to a second DNS answer."""

    addresses: tuple[str, ...] = ()

    def connect(self) -> None:
        if not self.addresses:
            return super().connect()
        error: OSError | None = None
        for address in self.addresses:
            try:
                self.sock = socket.create_connection((address, self.port), self.timeout)
                break
            except OSError as e:
                error = e
        else:
            assert error is not None
            raise error
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection, _PinnedHTTP):
    """TLS over `_PinnedHTTP`: certificate and SNI still checked against the URL's host name."""


@dataclass(frozen=True)
class _Target:
    url: str
    addresses: tuple[str, ...] = ()  # checked addresses to connect to; () = resolve the host

    @property
    def safe(self) -> str:
        return safe_url(self.url)

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        https = parts.scheme.lower() == "https"
        cls = _PinnedHTTPS if https else _PinnedHTTP
        # the port always given: http.client would read an IPv6 host's last group as one
        port = parts.port or (443 if https else 80)
        conn = cls(parts.hostname or "", port, timeout=timeout)
        conn.addresses = self.addresses
        return conn

    @property
    def request_path(self) -> str:
        parts = urlsplit(self.url)
        path = parts.path or "/"
        return f"{path}?{parts.query}" if parts.query else path


_HEADERS = {"User-Agent": "cogvx-weights/1", "Accept-Encoding": "identity"}


def _status_error(safe: str, status: int, reason: str) -> WeightsError:
    if status in (404, 410):
        what = "not found"
    elif status in (401, 403):
        what = "forbidden (check the URL and its token or signature)"
    elif status == 416:
        what = "the file is empty"
    else:
        what = "unexpected answer"
    return WeightsError(f"could not download weights from {safe}: {what} (HTTP {status} {reason})")


def _target(url: str, policy: UrlPolicy | None, name: str) -> _Target:
    """A hop's target: http(s) only; with a policy, its host's addresses checked and pinned."""
    split = split_url(url, policy.name if policy else name)
    return _Target(url, policy.addresses(split) if policy else ())


def _redirect_url(base: str, location: str) -> str:
    """The absolute URL a Location header points to; a malformed one raises UrlError."""
    try:
        return urljoin(base, location)
    except ValueError:  # e.g. "Invalid IPv6 URL" from an unclosed bracket
        raise UrlError(
            f"redirect to {safe_url(location)}: the redirect URL is malformed "
            "(not a valid http(s) URL)"
        ) from None


def _why(e: BaseException, timeout: float | None, safe: str) -> str:
    """An I/O error in words; a read timeout (EAGAIN under SO_RCVTIMEO) is a stall."""
    if isinstance(e, TimeoutError) or getattr(e, "errno", None) in (errno.EAGAIN, errno.ETIMEDOUT):
        return f"no data for {timeout:g} s from {safe}" if timeout else f"no data from {safe}"
    return str(e) or type(e).__name__


def _sleep_backoff(attempt: int, stop: threading.Event | None = None) -> None:
    delay = min(BACKOFF_S * (2 ** (attempt - 1)), BACKOFF_MAX_S)
    if stop is None:
        time.sleep(delay)
    else:
        stop.wait(delay)


def open_first(
    url: str, first_size: int, timeout: float, log: Log, policy: UrlPolicy | None = None
) -> tuple[_Target, http.client.HTTPConnection, http.client.HTTPResponse]:
    """Ask for the first range, following redirects; return the answer once it is 200 or 206.

    Every hop must be an http(s) URL (a redirect elsewhere fails at once). With a `policy`
    (user URLs), every hop's host is resolved and checked before connecting, and the connection
    goes to the checked addresses; without one (operator URLs) hosts are not restricted.
    """
    origin = safe_url(url)
    try:
        target = _target(url, policy, "weights URL")
    except UrlError as e:
        raise WeightsError(str(e)) from None
    redirects = 0
    failures = 0
    while True:
        conn = target.connect(timeout)
        try:
            headers = dict(_HEADERS, Range=f"bytes=0-{first_size - 1}")
            conn.request("GET", target.request_path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            failures += 1
            if failures > RETRIES or isinstance(e, ssl.SSLCertVerificationError):
                raise WeightsError(
                    f"could not connect to {target.safe}: {_why(e, timeout, target.safe)}"
                ) from e
            _sleep_backoff(failures)
            continue
        status = resp.status
        if status in (200, 206):
            return target, conn, resp
        location = resp.getheader("Location")
        with contextlib.suppress(OSError, http.client.HTTPException):
            resp.read(1 << 16)
        conn.close()
        if status in (301, 302, 303, 307, 308) and location:
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise WeightsError(
                    f"could not download weights from {target.safe}: too many redirects"
                )
            try:
                target = _target(_redirect_url(target.url, location), policy, "redirect to")
            except UrlError as e:
                raise WeightsError(f"could not download {origin}: {e}") from None
            log(f"{policy.name if policy else 'weights'}: redirected to {target.safe}")
            continue
        if status in RETRY_STATUSES:
            failures += 1
            if failures <= RETRIES:
                _sleep_backoff(failures)
                continue
        via = f" (redirected to {target.safe})" if redirects else ""
        raise _status_error(origin + via, status, resp.reason)


def content_range(resp: http.client.HTTPResponse, safe: str) -> tuple[int, int]:
    """(last byte, total size) from a 206 answer's `Content-Range: bytes 0-LAST/TOTAL`."""
    value = resp.getheader("Content-Range") or ""
    found = _FIRST_RANGE.fullmatch(value)
    if found is None or int(found[1]) >= int(found[2]):
        raise WeightsError(
            f"could not download weights from {safe}: bad Content-Range {clip(value, 100)!r} "
            "(the server must report the total size)"
        )
    return int(found[1]), int(found[2])


def content_range_total(resp: http.client.HTTPResponse, safe: str) -> int:
    """Total size from a 206 answer's Content-Range header."""
    return content_range(resp, safe)[1]
