"""One log function: a line on stdout, flushed at once (coglet attributes lines as they arrive).

User text that a log line or message quotes (a URL, a value) goes through `clip`, and
`bound_library_logs` clips what diffusers / transformers print (diffusers echoes the part of a
prompt it truncates, a megabyte for a megabyte prompt).
"""

from __future__ import annotations

import logging

TEXT_LIMIT = 200  # characters of user text a log line or message quotes
LIBRARY_LIMIT = 500  # characters of one library log record
LIBRARY_LOGGERS = ("", "diffusers", "transformers")  # "" is the root logger


def log(message: str) -> None:
    """Print one log line and flush it, so it lands in the prediction or setup it belongs to."""
    print(message, flush=True)


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` if at most `limit` characters, else its first `limit` plus "… (N chars)"."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars)"


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
