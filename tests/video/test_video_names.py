"""A user's file name never breaks a video message into two lines (no forged log lines)."""

from __future__ import annotations

import pytest

from cogvx.video import VideoReadError, probe_video


@pytest.mark.parametrize("body", [b"", b"not a video at all\n" * 8])
def test_a_file_name_with_a_newline_gives_a_one_line_message(tmp_path, body):
    path = tmp_path / "clip\n[ERROR] setup failed\x1b[31m.mp4"
    path.write_bytes(body)
    with pytest.raises(VideoReadError) as err:
        probe_video(path)
    message = str(err.value)
    assert message.isprintable(), message
    assert "clip\\n[ERROR] setup failed\\x1b[31m.mp4" in message
