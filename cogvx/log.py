"""One log function: a line on stdout, flushed at once (coglet attributes lines as they arrive).

User text that a log line or message quotes (a URL, a value, a file or tar member name) goes
through `clip`: one printable line (control characters escaped, so a name holding a newline or
an ANSI escape cannot forge a log line), bounded. `bound_library_logs` clips what diffusers /
transformers print (diffusers echoes the part of a prompt it truncates, a megabyte for a
megabyte prompt).
"""

from __future__ import annotations

import logging

TEXT_LIMIT = 200  # characters of user text a log line or message quotes
LIBRARY_LIMIT = 500  # characters of one library log record
LIBRARY_LOGGERS = ("", "diffusers", "transformers")  # "" is the root logger


def log(message: str) -> None:
    """Print one log line and flush it, so it lands in the prediction or setup it belongs to."""
    print(message, flush=True)


def printable(text: str) -> str:
    """`text` with each non-printable character written as its Python escape: newline, CR, tab,
    ESC and the other C0/C1 controls, U+2028/U+2029, bidi overrides, lone surrogates (\\n, \\x1b,
    \\u2028, ...). Printable text, spaces included, is unchanged."""
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    return repr(c)[1:-1]  # repr escapes exactly what str.isprintable refuses


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` as one printable line (see `printable`) of at most `limit` characters; if longer,
    its first `limit` escaped characters (an escape is never cut) plus "… (N chars)", N the
    length of the original text. Only for messages and logs, never for data."""
    text = str(text)
    if len(text) <= limit:
        shown = printable(text)
        if len(shown) <= limit:
            return shown
    parts: list[str] = []
    used = 0
    for c in text[:limit]:  # escapes only lengthen: the first `limit` characters suffice
        piece = c if c.isprintable() else _escape(c)
        if used + len(piece) > limit:
            break
        parts.append(piece)
        used += len(piece)
    return f"{''.join(parts)}… ({len(text)} chars)"


class ClipFilter(logging.Filter):
    """A handler filter that clips each record's formatted message to `limit` characters."""

    def __init__(self, limit: int = LIBRARY_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > self.limit:
            record.msg, record.args = clip(message, self.limit), ()
        return True


def bound_library_logs(
    limit: int = LIBRARY_LIMIT, names: tuple[str, ...] = LIBRARY_LOGGERS
) -> None:
    """Clip every record the handlers of these loggers print (idempotent; call after imports)."""
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, ClipFilter) for f in handler.filters):
                handler.addFilter(ClipFilter(limit))
