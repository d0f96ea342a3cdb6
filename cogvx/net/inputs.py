"""File inputs at the Runner boundary: only files Cog downloaded for this request are read.

Cog 0.23.1 (coglet) downloads an upload, a data: URI or an http(s) URL into
`tempfile.NamedTemporaryFile(suffix=<name>, delete=False)` and hands `run()` a `cog.Path`;
any other string (a server path such as /etc/passwd, file://...) reaches `run()` unchanged, as
a plain `str`. `request_file` accepts a value only if every layer agrees it is such a download:

1. it is a Path object, not a string (what coglet passes for anything that is not a URL);
2. it names an entry directly in the temp dir called `tmp` + 8 random characters + a suffix
   (NamedTemporaryFile's name: a caller cannot guess one it was not handed);
3. that entry is a regular file (not a symlink), with one link, owned by this process's user,
   with no group/other permission bits (mkstemp creates 0600);
4. it was created after this module was imported (files left by an earlier worker are refused).

Every refusal, whether the path exists or not, gives the same message.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path, PurePath
from typing import Any

from cogvx.checks import shown
from cogvx.errors import InputError

# tempfile._RandomNameSequence: 8 characters from this alphabet after the "tmp" prefix
DOWNLOAD_NAME = re.compile(r"tmp[a-z0-9_]{8}[^/]*")
STARTED_NS = time.time_ns()  # imported when the predictor loads, before setup and any request


def refusal(name: str, value: Any) -> InputError:
    """The one message for a file input that is not this request's download."""
    text = str(value) if isinstance(value, (str, PurePath)) else value
    return InputError(
        f"{name}={shown(text)} is not a file sent with this request: upload the file, or give "
        "an http(s) URL or a data: URI. Paths on the server are never read"
    )


def is_request_download(value: Any) -> bool:
    """True if `value` is a file Cog downloaded for this request (the checks above)."""
    if not isinstance(value, PurePath):
        return False
    path = os.fspath(value)
    folder, base = os.path.split(path)
    if folder != tempfile.gettempdir() or not DOWNLOAD_NAME.fullmatch(base):
        return False
    try:
        st = os.lstat(path)
    except (OSError, ValueError):  # missing, unreadable, or a NUL in the name
        return False
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_uid == os.geteuid()
        and not st.st_mode & 0o077
        and st.st_ctime_ns >= STARTED_NS
    )


def request_file(name: str, value: Any) -> Path | None:
    """`value` as a Path if Cog downloaded it for this request; None stays None."""
    if value is None:
        return None
    if not is_request_download(value):
        raise refusal(name, value)
    return Path(value)
