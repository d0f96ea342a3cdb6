"""cogvx.log.clip: user text quoted in messages and logs is one printable, bounded line."""

from __future__ import annotations

import logging
import shutil

import pytest

from cogvx.log import ClipFilter, clip, printable
from cogvx.services.caption import load_clip
from tests.support.video_reference import DATA

FORGED = "x\n[ERROR] setup failed\r\x1b[31mred\x1b[0m\u2028line\u2029para\u202eevil\x85\x00\t."


def test_clip_escapes_newlines_cr_ansi_and_unicode_separators():
    shown = clip(FORGED)
    assert shown.isprintable() and len(shown.splitlines()) == 1
    assert shown == (
        r"x\n[ERROR] setup failed\r\x1b[31mred\x1b[0m\u2028line\u2029para\u202eevil\x85\x00\t."
    )
    assert printable(FORGED) == shown


def test_clip_keeps_printable_text_as_it_is():
    text = "a café, 猫, 'quoted' \"and\" \\ back"
    assert clip(text) == text


def test_clip_limit_counts_the_escaped_characters_and_never_cuts_an_escape():
    assert clip("\x1b" * 100, 10) == r"\x1b\x1b… (100 chars)"
    assert clip("ab\ncd", 3) == "ab… (5 chars)"  # the 2-character escape of "\\n" would pass 3
    assert clip("ab\ncd", 5) == r"ab\nc… (5 chars)"  # "ab\\ncd" is 6 characters once escaped
    assert clip("ab\ncd", 6) == r"ab\ncd"
    huge = clip("\n" * 1_000_000)
    assert huge == "\\n" * 100 + "… (1000000 chars)"


def test_library_records_over_the_limit_are_one_line():
    record = logging.LogRecord("diffusers", logging.WARNING, __file__, 1, "a\nb" * 400, (), None)
    assert ClipFilter(50).filter(record)
    message = record.getMessage()
    assert message.isprintable() and message.endswith("… (1200 chars)")


@pytest.mark.parametrize("name", ["a\n[ERROR] setup failed: fake.mp4", "b\r\x1b[2Kok.mp4"])
def test_video_name_with_a_newline_gives_one_line_logs(tmp_path, name):
    video = tmp_path / name  # a URL's %0A becomes a newline in Cog's temp file name
    shutil.copyfile(DATA / "h264.mp4", video)
    logs: list[str] = []
    load_clip(video, "chat", log=logs.append)
    assert logs and all(line.isprintable() for line in logs)
    assert any(clip(name) in line for line in logs)
