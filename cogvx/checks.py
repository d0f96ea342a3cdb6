"""Input checks shared by every predictor: errors name the input, the value and what is allowed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def prompt(text: str | None, name: str = "prompt") -> str:
    """A non-empty prompt, stripped."""
    text = (text or "").strip()
    if not text:
        raise ValueError(f"{name} must not be empty; describe the video you want")
    return text


def choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """`value` if it is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")
    return value


def in_range(name: str, value: float, lo: float, hi: float) -> float:
    """`value` if lo <= value <= hi."""
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range; allowed: {lo} to {hi}")
    return value
