"""The caption prompt is checked before any work: valid Unicode, at most PROMPT_MAX_CHARS characters
(refused before tokenizing), and for a batch, room beside the most frames a clip gets (refused
before anything is unpacked). The real service with the tiny CogVLM2 (2048 positions) on CPU."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cogvx.errors import InputError
from cogvx.services.caption import MAX_FRAMES, PROMPT_MAX_CHARS, CaptionService
from cogvx.services.caption_batch import caption_batch_file
from cogvx.video import write_video
from tests.support.e2e import tiny_caption_folder

TOKENS = 4


class Logged:
    """The service's log lines, kept."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> CaptionService:
    folder = tiny_caption_folder(tmp_path_factory.mktemp("w") / "caption")
    return CaptionService(str(folder), log=Logged())


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A zip of four 2 s clips."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    archive = root / "clips.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(4):
            frames = rng.integers(0, 255, (16, 32, 48, 3), dtype=np.uint8)
            zf.write(write_video(frames, root / f"clip{i}.mp4", fps=8), f"clip{i}.mp4")
    return archive


@pytest.fixture
def logs(service) -> list[str]:
    log = service.log
    assert isinstance(log, Logged)
    log.lines.clear()
    return log.lines


def _batch(service, clips, tmp_path, monkeypatch, prompt: str) -> Path:
    monkeypatch.setenv("COGVX_OUTPUT_DIR", str(tmp_path / "out"))
    return caption_batch_file(service, clips, prompt, "chat", TOKENS, batch_size=2)


def test_batch_refuses_an_over_long_prompt_before_unpacking(
    service, clips, logs, tmp_path, monkeypatch
):
    prompt = "word " * 200_000  # 1 MB
    with pytest.raises(InputError) as err:
        _batch(service, clips, tmp_path, monkeypatch, prompt)
    message = str(err.value)
    assert message.startswith(f"prompt is {len(prompt.strip())} characters; at most ")
    assert f"at most {PROMPT_MAX_CHARS} are accepted" in message
    assert logs == []  # nothing unpacked ("videos: 4 clips"), no clip read ("read N frames")
    assert not (tmp_path / "out").exists()  # no output folder, no clips folder


def test_batch_refuses_a_prompt_with_no_room_beside_the_frames_before_unpacking(
    service, clips, logs, tmp_path, monkeypatch
):
    prompt = "describe " * 3000  # under PROMPT_MAX_CHARS, past the tiny model's 2048 positions
    assert len(prompt) < PROMPT_MAX_CHARS
    with pytest.raises(InputError) as err:
        _batch(service, clips, tmp_path, monkeypatch, prompt)
    message = str(err.value)
    assert message.startswith(f"prompt is too long: with {MAX_FRAMES} frames and max_new_tokens")
    assert "the model has 2048, so the question (with the 'chat' template) may take " in message
    assert logs == []
    assert not (tmp_path / "out").exists()


def test_batch_with_a_prompt_that_fits_captions_every_clip(
    service, clips, logs, tmp_path, monkeypatch
):
    out = _batch(service, clips, tmp_path, monkeypatch, "  Describe.  ")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == [f"clip{i}.mp4" for i in range(4)]
    assert all(r["error"] is None and r["caption"] is not None for r in rows), rows
    assert all(r["prompt"] == "Describe." for r in rows)
    assert sum(line.startswith("read ") for line in logs) == 4


def test_a_prompt_too_long_for_some_clips_only_fails_those_rows(service, tmp_path):
    """caption_many (the dataset job's path) still fits the prompt clip by clip."""
    from cogvx.services.caption_batch import caption_many

    rng = np.random.default_rng(1)
    short = write_video(rng.integers(0, 255, (8, 32, 48, 3), dtype=np.uint8), tmp_path / "s.mp4", 8)
    long = write_video(rng.integers(0, 255, (96, 32, 48, 3), dtype=np.uint8), tmp_path / "l.mp4", 8)
    prompt = "a " * 2000  # ~2005 tokens: room beside 2 frames, not beside 13 (1991)
    rows = list(caption_many(service, [short, long, short], prompt, "chat", TOKENS, 2))
    assert [r.frames_used for r in rows] == [2, 13, 2]
    assert [r.error is None for r in rows] == [True, False, True], [r.error for r in rows]
    assert rows[1].error.startswith("InputError: prompt is too long: with 13 frames")


def _single(service, video: Path, prompt: str) -> str:
    return service.run(video=video, prompt=prompt, strategy="chat", max_new_tokens=TOKENS,
                       temperature=0.0, top_p=1.0, seed=None)  # fmt: skip


def test_single_caption_refuses_a_lone_surrogate(service, tmp_path):
    video = write_video(np.zeros((8, 32, 48, 3), np.uint8), tmp_path / "v.mp4", fps=8)
    with pytest.raises(InputError) as err:
        _single(service, video, "describe \ud800 this")
    assert str(err.value).startswith("prompt holds an invalid character at position 9")


def test_single_caption_refuses_a_10_mb_prompt_before_tokenizing(service, tmp_path):
    video = write_video(np.zeros((8, 32, 48, 3), np.uint8), tmp_path / "v.mp4", fps=8)
    prompt = "word " * 2_000_000
    with pytest.raises(InputError) as err:
        _single(service, video, prompt)
    # the character cap, not the token count: the whole text never reached the tokenizer
    assert str(err.value).startswith(f"prompt is {len(prompt) - 1} characters; at most ")
    with pytest.raises(InputError, match="prompt is 65537 characters; at most 65536"):
        _single(service, video, "x" * (PROMPT_MAX_CHARS + 1))
    assert _single(service, video, "  Describe.  ") is not None


def test_dataset_job_refuses_an_over_long_prompt_before_starting(tmp_path):
    from cogvx.services.caption_dataset import DatasetJob

    job = DatasetJob(str(tmp_path), tmp_path / "out.jsonl", None, prompt="word " * 200_000)
    with pytest.raises(InputError, match=r"^prompt is 999999 characters; at most 65536"):
        job.checked()
    assert (
        DatasetJob(str(tmp_path), tmp_path / "o.jsonl", None, prompt=" Hi ").checked().prompt
        == "Hi"
    )
