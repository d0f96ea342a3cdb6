"""HTTP for every fetch: pinned connections to checked addresses, redirects, retries.

User URLs (a `policy` given) also get: at most USER_MAX_ADDRESSES addresses of a host tried, a
timeout retried at most USER_TIMEOUT_RETRIES times, and an overall `Deadline` per URL that every
address, redirect hop, retry and read counts against. Operator URLs keep none of these limits.
"""

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

from cogvx.errors import InputError, WeightsError
from cogvx.log import clip
from cogvx.net.urls import UrlError, UrlPolicy, safe_url, split_url

RETRIES = 5  # attempts per chunk after the first one
BACKOFF_S = 0.25  # first retry delay; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 8.0
MAX_REDIRECTS = 10
PIECE = 1 << 20  # socket reads per call: a dropped connection loses at most this much
RAMP_MIN = 64 << 10  # smallest chunk of the ramp-up
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
USER_MAX_ADDRESSES = 4  # addresses of a user URL's host tried at most (in the resolver's order)
USER_TIMEOUT_RETRIES = 1  # a timeout against a user URL is retried this many times at most
_FIRST_RANGE = re.compile(r"bytes 0+-([0-9]{1,19})/([0-9]{1,19})")  # sizes below 10**19 bytes

Log = Callable[[str], None]


def is_url(source: str) -> bool:
    """True for http(s) URLs."""
    return source.startswith(("http://", "https://"))


class DeadlineExceeded(InputError):
    """A user URL's download as a whole took longer than its deadline; names the input."""


class Deadline:
    """One overall time limit for fetching one user URL: `with Deadline(name, url, s) as d:`.

    Connect timeouts are cut to the time left, and at the limit a watchdog shuts the watched
    connection, so a server trickling a byte just inside every read timeout is cut off too.
    """

    def __init__(self, name: str, url: str, seconds: float) -> None:
        self.name, self.url, self.seconds = name, url, seconds
        self.end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None  # our duplicate of the watched connection's
        self._fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._replace(None)

    @property
    def expired(self) -> bool:
        """Whether the time is up."""
        return self._fired or time.monotonic() >= self.end

    def left(self) -> float:
        """Seconds left (0 when none)."""
        return 0.0 if self._fired else max(0.0, self.end - time.monotonic())

    def check(self) -> None:
        """Raise DeadlineExceeded once the time is up."""
        if self.expired:
            raise self.error()

    def error(self) -> DeadlineExceeded:
        """The error naming the input, its URL (no query) and the limit."""
        return DeadlineExceeded(
            f"{self.name} {safe_url(self.url)}: the download took longer than "
            f"{self.seconds:g} s (the limit for one file); give a faster host or a smaller file"
        )

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock`'s connection at the limit. A duplicate descriptor is kept: it outlives
        http.client dropping the socket and TLS taking the original over, and is never reused."""
        dup = sock.dup()
        self._replace(dup)
        if self._fired:
            _shut(dup)

    def body(self, resp: http.client.HTTPResponse) -> TimedBody:
        """`resp`'s body, read under this deadline."""
        return TimedBody(resp, self)

    def _replace(self, sock: socket.socket | None) -> None:
        with self._lock:
            old, self._sock = self._sock, sock
        if old is not None:
            old.close()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            if self._sock is not None:
                _shut(self._sock)


class TimedBody:
    """A response body whose reads raise DeadlineExceeded once its deadline has passed (a read
    the watchdog cut short included: its data may be incomplete)."""

    def __init__(self, resp: http.client.HTTPResponse, deadline: Deadline) -> None:
        self.resp, self.deadline = resp, deadline

    def read(self, amt: int) -> bytes:
        """Up to `amt` bytes of the body (b"" at its end)."""
        self.deadline.check()
        try:
            data = self.resp.read(amt)
        except (OSError, http.client.HTTPException, ValueError):
            self.deadline.check()
            raise
        self.deadline.check()
        return data


def _shut(sock: socket.socket) -> None:
    """End the TCP connection under `sock` (any descriptor of it): blocked reads return."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to checked addresses (tried in order), not to a second DNS answer."""

    addresses: tuple[str, ...] = ()
    deadline: Deadline | None = None  # connect timeouts never run past it

    def _wait(self) -> float | None:
        if self.deadline is None:
            return self.timeout
        left = self.deadline.left()
        if left <= 0:
            raise TimeoutError("the overall deadline has passed")
        return left if self.timeout is None else min(self.timeout, left)

    def connect(self) -> None:
        if not self.addresses:
            self.timeout = self._wait()
            super().connect()
            if self.deadline is not None:
                self.deadline.watch(self.sock)
            return
        error: OSError | None = None
        for address in self.addresses:
            try:
                self.sock = socket.create_connection((address, self.port), self._wait())
                break
            except OSError as e:
                error = e
                if isinstance(e, TimeoutError) and self.deadline and self.deadline.expired:
                    raise
        else:
            assert error is not None
            raise error
        if self.deadline is not None:  # before TLS: the handshake is watched too
            self.deadline.watch(self.sock)
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

    def connect(
        self, timeout: float, deadline: Deadline | None = None
    ) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        https = parts.scheme.lower() == "https"
        cls = _PinnedHTTPS if https else _PinnedHTTP
        # the port always given: http.client would read an IPv6 host's last group as one
        port = parts.port or (443 if https else 80)
        conn = cls(parts.hostname or "", port, timeout=timeout)
        conn.addresses = self.addresses
        conn.deadline = deadline
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
    return _Target(url, policy.addresses(split)[:USER_MAX_ADDRESSES] if policy else ())


def _redirect_url(base: str, location: str) -> str:
    """The absolute URL a Location header points to; a malformed one raises UrlError."""
    try:
        return urljoin(base, location)
    except ValueError:  # e.g. "Invalid IPv6 URL" from an unclosed bracket
        raise UrlError(
            f"redirect to {safe_url(location)}: the redirect URL is malformed "
            "(not a valid http(s) URL)"
        ) from None


def _timed_out(e: BaseException) -> bool:
    """A connect or read timeout (EAGAIN under SO_RCVTIMEO included)."""
    return isinstance(e, TimeoutError) or getattr(e, "errno", None) in (
        errno.EAGAIN,
        errno.ETIMEDOUT,
    )


def _why(e: BaseException, timeout: float | None, safe: str) -> str:
    """An I/O error in words; a read timeout (EAGAIN under SO_RCVTIMEO) is a stall."""
    if _timed_out(e):
        return f"no data for {timeout:g} s from {safe}" if timeout else f"no data from {safe}"
    return str(e) or type(e).__name__


def _sleep_backoff(
    attempt: int, stop: threading.Event | None = None, deadline: Deadline | None = None
) -> None:
    delay = min(BACKOFF_S * (2 ** (attempt - 1)), BACKOFF_MAX_S)
    if deadline is not None:
        delay = min(delay, deadline.left())
    if stop is None:
        time.sleep(delay)
    else:
        stop.wait(delay)


def open_first(
    url: str,
    first_size: int,
    timeout: float,
    log: Log,
    policy: UrlPolicy | None = None,
    deadline: Deadline | None = None,
) -> tuple[_Target, http.client.HTTPConnection, http.client.HTTPResponse]:
    """Ask for the first range, following redirects; return the answer once it is 200 or 206.

    Every hop must be an http(s) URL (a redirect elsewhere fails at once). With a `policy`
    (user URLs), every hop's host is resolved and checked before connecting, the connection
    goes to the checked addresses (USER_MAX_ADDRESSES at most) and a timeout is retried
    USER_TIMEOUT_RETRIES times at most; without one (operator URLs) hosts are not restricted.
    With a `deadline`, DeadlineExceeded is raised once it passes (read the body through
    `deadline.body(resp)` to keep it for the reads).
    """
    origin = safe_url(url)
    try:
        target = _target(url, policy, "weights URL")
    except UrlError as e:
        raise WeightsError(str(e)) from None
    redirects = 0
    failures = timeouts = 0
    while True:
        if deadline is not None:
            deadline.check()
        conn = target.connect(timeout, deadline)
        try:
            headers = dict(_HEADERS, Range=f"bytes=0-{first_size - 1}")
            conn.request("GET", target.request_path, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if deadline is not None and deadline.expired:
                raise deadline.error() from None
            failures += 1
            timeouts += policy is not None and _timed_out(e)
            if (
                failures > RETRIES
                or timeouts > USER_TIMEOUT_RETRIES
                or isinstance(e, ssl.SSLCertVerificationError)
            ):
                raise WeightsError(
                    f"could not connect to {target.safe}: {_why(e, timeout, target.safe)}"
                ) from e
            _sleep_backoff(failures, deadline=deadline)
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
                _sleep_backoff(failures, deadline=deadline)
                continue
        via = f" (redirected to {target.safe})" if redirects else ""
        raise _status_error(origin + via, status, resp.reason)


def content_range(resp: http.client.HTTPResponse, safe: str) -> tuple[int, int]:
    """(last byte, total size) from a 206 answer's `Content-Range: bytes 0-LAST/TOTAL`."""
    value = resp.getheader("Content-Range") or ""
    found = _FIRST_RANGE.fullmatch(value)
    if found is None or int(found[1]) >= int(found[2]):
        raise WeightsError(
            f"could not download weights from {safe}: bad Content-Range {clip(repr(value), 100)} "
            "(the server must report the total size)"
        )
    return int(found[1]), int(found[2])


def content_range_total(resp: http.client.HTTPResponse, safe: str) -> int:
    """Total size from a 206 answer's Content-Range header."""
    return content_range(resp, safe)[1]
