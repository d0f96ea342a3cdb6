"""Input checks shared by every predictor: errors name the input, the value and what is allowed.

Values are quoted through `shown` (a bounded repr), so a megabyte input gives a short message.
Integer inputs go through `integer` / `integer_choice`: ints and integral floats (JSON `7.0`, which
coglet's schema lets through as a float) become ints; booleans, other floats and other types are
refused. Seeds go through `seed`: 0 to SEED_MAX.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from cogvx.errors import InputError
from cogvx.log import clip

VALUE_LIMIT = 100  # characters of a value's repr quoted in a message
SEED_MAX = 2**32 - 1  # seeds are 0..2^32-1, as numpy and most Replicate models take
PROMPT_CHARS = 20_000  # longer prompts are cut before tokenizing (text encoders read < 2,000)
MAX_ASPECT = 32.0  # a video's width/height (or height/width) above this is refused


def shown(value: Any, limit: int = VALUE_LIMIT) -> str:
    """`repr(value)`, clipped to `limit` characters for messages and logs."""
    return clip(repr(value), limit)


def plain_text(value: str | None, name: str) -> str:
    """`value` stripped ('' for None), refused if it is not valid Unicode (a lone surrogate
    from a JSON escape like \\ud800 breaks the tokenizers with an error naming nothing)."""
    value = (value or "").strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{name} holds an invalid character at position {exc.start} (a lone UTF-16 "
            "surrogate); send valid Unicode text"
        ) from None
    return value


def prompt(text: str | None, name: str = "prompt") -> str:
    """A non-empty prompt, stripped."""
    text = plain_text(text, name)
    if not text:
        raise InputError(f"{name} must not be empty; describe the video you want")
    return text


def cut_text(name: str, text: str, log: Callable[[str], None], limit: int = PROMPT_CHARS) -> str:
    """At most `limit` characters, cut at a space in the second half (else hard), logged.

    Tokenizers' pieces never cross a space, so the leading tokens (all a text encoder reads)
    stay the same; tokenizing 1 MB costs seconds of CPU each time."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    cut = cut[:space] if space > limit // 2 else cut
    log(f"{name} is {len(text)} characters; the first {len(cut)} are tokenized")
    return cut


def aspect_ratio(what: str, width: int, height: int, limit: float = MAX_ASPECT) -> None:
    """InputError when width/height or height/width is above `limit` (`what` names the file)."""
    if max(width, height) > limit * min(width, height):
        raise InputError(
            f"{what}: {width}x{height} has an aspect ratio above {limit:g}:1; crop it first"
        )


def choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """`value` if it is one of `allowed`."""
    if value not in allowed:
        raise InputError(f"{name}={shown(value)} is not allowed; choose one of {list(allowed)}")
    return value


def in_range(name: str, value: float, lo: float, hi: float) -> float:
    """`value` if lo <= value <= hi."""
    if not lo <= value <= hi:
        raise InputError(f"{name}={shown(value)} is out of range; allowed: {lo} to {hi}")
    return value


def _whole(name: str, value: Any, allowed: str) -> int:
    """`value` as an int: an int, or a float with no fractional part; never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}={shown(value)} is not an integer; allowed: {allowed}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise InputError(f"{name}={shown(value)} is not a whole number; allowed: {allowed}")
    return int(value)


def integer(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer input in lo..hi; an integral float (7.0) becomes 7."""
    number = _whole(name, value, f"integers {lo} to {hi}")
    if not lo <= number <= hi:
        raise InputError(f"{name}={shown(value)} is out of range; allowed: {lo} to {hi}")
    return number


def integer_choice(name: str, value: Any, allowed: Sequence[int]) -> int:
    """An integer input that must be one of `allowed`; an integral float (49.0) becomes 49."""
    number = _whole(name, value, f"one of {list(allowed)}")
    return choice(name, number, allowed)


def seed(value: Any) -> int | None:
    """A seed in 0..SEED_MAX (an integral float becomes an int), or None to draw one."""
    if value is None:
        return None
    allowed = f"integers 0 to {SEED_MAX} (leave blank for a random seed)"
    number = _whole("seed", value, allowed)
    if not 0 <= number <= SEED_MAX:
        raise InputError(f"seed={shown(value)} is out of range; allowed: {allowed}")
    return number
