"""The caption dataset's INPUT: a folder, a glob, a video file or a list file, as clip paths.

Relative paths in a list file are relative to the list file's folder. Neither a folder nor a
`**` glob follows links to folders (so links that loop end); a file they list under several
names (links) is listed once, under the name that sorts first.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from cogvx.errors import InputError
from cogvx.log import clip

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")
GLOB_CHARS = "*?["


def is_remote(path: str) -> bool:
    """True for URLs (s3://, gs://, https://, ...) other than file://."""
    return "://" in path and not path.lower().startswith("file://")


def _local(text: str, base: str | None = None) -> str:
    """`text` as an absolute path; a relative one is taken relative to `base` (default: CWD)."""
    if text.lower().startswith("file://"):
        text = unquote(urlparse(text).path)
    text = os.path.expanduser(text)
    return os.path.abspath(os.path.join(base, text) if base else text)


def _recursive_glob(pattern: str) -> list[str]:
    """The files a `**` glob matches; unlike glob.glob's, its `**` does not follow links to
    folders (glob.glob follows them, round any loop they make until the path is too long)."""
    parts = Path(pattern).parts
    parts += ("*",) if parts[-1] == "**" else ()  # pathlib's final ** matches folders only
    magic = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    found = Path(*parts[:magic]).glob(str(Path(*parts[magic:])))
    return [str(p) for p in found if p.is_file()]


def _once_per_file(paths: list[str]) -> list[str]:
    """`paths` less those naming (through links) a file an earlier one names."""
    first: dict[str, str] = {}
    for p in paths:
        first.setdefault(os.path.realpath(p), p)
    return list(first.values())


def list_inputs(spec: str) -> list[str]:
    """The clips INPUT names, in order, each once: a folder (recursive, video suffixes), a glob,
    a video file, or a text file with one path or URL a line (blank lines and # comments skipped;
    relative paths are relative to the list file's folder). Local paths become absolute; URLs
    stay as written. A folder or glob lists a file reached through several links once."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        items = _once_per_file(sorted(_local(str(p)) for p in found))
        where = f"folder {spec} (suffixes {', '.join(VIDEO_SUFFIXES)})"
    elif path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        items, where = [_local(spec)], spec
    elif path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"INPUT {clip(spec)} is a list file that is not UTF-8 text (byte {exc.start}); a "
                f"list file holds a path or URL a line, and a video needs one of the suffixes "
                f"{', '.join(VIDEO_SUFFIXES)}"
            ) from None
        lines = (line.strip() for line in text.splitlines())
        kept = [line for line in lines if line and not line.startswith("#")]
        base = str(path.parent)
        items = [line if is_remote(line) else _local(line, base) for line in kept]
        where = f"list file {spec}"
    elif any(c in spec for c in GLOB_CHARS):
        pattern = os.path.expanduser(spec)
        matches = _recursive_glob(pattern) if "**" in pattern else glob.glob(pattern)
        items = _once_per_file(sorted(_local(p) for p in matches if os.path.isfile(p)))
        where = f"glob {spec}"
    else:
        raise InputError(
            f"INPUT {clip(spec)} is not a folder, a video file, a list file or a glob that matches"
        )
    if not items:
        raise InputError(f"no clips found in {clip(where)}")
    return list(dict.fromkeys(items))
