"""User-controlled names in LoRA messages: tar member names on one line, URL tokens left out."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cogvx.lora import LoraError
from cogvx.lora.files import extract_safetensors
from cogvx.lora.sources import MAX_SOURCE_CHARS, parse_source

FORGED = "a\nlora: loaded https://evil/ OK\r\x1b[2K\u2028.safetensors"


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _one_line(err: pytest.ExceptionInfo[LoraError]) -> str:
    message = str(err.value)
    assert message.isprintable() and len(message.splitlines()) == 1, repr(message)
    return message


def test_a_member_that_is_not_safetensors_is_named_on_one_line(tmp_path):
    tar = _tar(tmp_path / "l.partial", {FORGED: b"not safetensors"})
    with pytest.raises(LoraError, match="in the tarball is not a safetensors file") as err:
        extract_safetensors(tar, "https://x/l.tar", 1 << 20)
    assert r"a\nlora: loaded https://evil/ OK\r\x1b[2K\u2028.safetensors" in _one_line(err)


def test_an_oversized_member_is_named_on_one_line(tmp_path):
    tar = _tar(tmp_path / "l.partial", {FORGED: b"x" * 2048})
    with pytest.raises(LoraError, match="over the 0 MB limit") as err:
        extract_safetensors(tar, "https://x/l.tar", 1024)
    _one_line(err)


def test_several_members_are_listed_on_one_line(tmp_path):
    tar = _tar(tmp_path / "l.partial", {FORGED: b"x", "b\n.safetensors": b"y"})
    with pytest.raises(LoraError, match="holds several .safetensors files") as err:
        extract_safetensors(tar, "https://x/l.tar", 1 << 20)
    _one_line(err)


@pytest.mark.parametrize(
    "source",
    [
        "https://cdn.example/l.safetensors?X-Amz-Signature=SECRETTOKEN123&p=" + "a" * 5000,
        "https://cdn.example/l.safetensors#SECRETTOKEN123" + "a" * 5000,
        "https://user:SECRETTOKEN123@cdn.example/" + "a" * 5000,
        "owner/repo/l.safetensors?SECRETTOKEN123" + "a" * 5000,  # not a URL: no '?' part either
    ],
)
def test_an_overlong_lora_url_message_leaves_the_token_out(source):
    with pytest.raises(LoraError, match=f"at most {MAX_SOURCE_CHARS} are accepted") as err:
        parse_source(source)
    message = _one_line(err)
    assert "SECRETTOKEN123" not in message and len(message) < 400
    assert f"is {len(source)} characters" in message


def test_a_dotdot_repo_path_is_quoted_and_escaped_once():
    with pytest.raises(LoraError, match=r"^lora_url='o/r/\.\./a\\tb': '\.\.' is not allowed"):
        parse_source("o/r/../a\tb")
