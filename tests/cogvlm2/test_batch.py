"""Batched captioning gives the ids of one clip at a time (and the golden ones), with per-clip
stopping; many clips flow through the reader pool in order, bad ones as error rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cogvx.cogvlm2.batching import choose_batch_size, kv_bytes_per_token, row_bytes
from cogvx.cogvlm2.captioner import CogVLM2Captioner
from cogvx.cogvlm2.config import CogVLM2Config
from cogvx.video import write_video
from tests.support.e2e import tiny_caption_folder
from tests.support.shared_fixtures import fixture_dir

FIXTURE = fixture_dir("cogvlm2")
TOKENS = 16


@pytest.fixture(scope="module")
def captioner() -> CogVLM2Captioner:
    return CogVLM2Captioner.from_folder(FIXTURE)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    return load_file(str(FIXTURE / "video.safetensors"))["video"]  # (3, T, H, W) uint8


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "reference.safetensors"))


def _clips(video):
    # different frame counts give different prompt lengths: the batch is really left-padded
    return [video, video[:, :2], video.flip(1), video[:, :1], video[:, 1:3]]


@pytest.mark.parametrize("template", ["chat", "base"])
def test_batched_ids_equal_one_clip_at_a_time_and_the_golden_ids(captioner, video, ref, template):
    clips = _clips(video)
    batched = captioner.generate_ids_batch(clips, template=template, max_new_tokens=TOKENS)
    single = [captioner.generate_ids(c, template=template, max_new_tokens=TOKENS) for c in clips]
    assert batched == single
    assert batched[0] == ref[f"{template}.generated_ids"][0].tolist()  # the original's ids
    assert len({len(captioner.prepare(c, template=template).input_ids) for c in clips}) > 1


def test_each_clip_stops_at_its_own_end_token(captioner, video):
    clips = _clips(video)
    rows = []
    for c in clips:
        inputs = captioner.prepare(c)
        rows.append((inputs.input_ids, inputs.token_type_ids, inputs.pixel_values))
    free = captioner.generate_ids_batch(clips, max_new_tokens=TOKENS)
    stop = free[1][2]  # clip 1's third token becomes the end-of-sequence token
    model = captioner.model
    batched = model.generate_batch(rows, max_new_tokens=TOKENS, eos_token_id=stop)
    single = [
        model.generate(*row, max_new_tokens=TOKENS, eos_token_id=stop)[0].tolist() for row in rows
    ]
    assert batched == single
    assert batched[1] == free[1][:3]  # stopped after 3 tokens, the stop token included
    assert max(len(r) for r in batched) > 3  # other clips went on


def test_empty_batch_and_sampling_is_not_batched(captioner):
    assert captioner.generate_ids_batch([]) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        captioner.generate_ids_batch([np.zeros((1, 8, 8, 3), np.uint8)], max_new_tokens=0)


def _real_size(cfg: CogVLM2Config) -> CogVLM2Config:
    # THUDM/cogvlm2-llama3-caption: Llama-3-8B (32 layers, 8 KV heads of 128), EVA ViT at 224 px
    return dataclasses.replace(
        cfg, hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32
    )


@pytest.mark.parametrize(
    ("free_gib", "want"),
    [(None, 4), (0.1, 1), (4, 7), (12, 16), (80, 16)],
)
def test_batch_size_from_free_memory(captioner, free_gib, want):
    cfg = _real_size(captioner.model.config)
    assert kv_bytes_per_token(cfg) == 2 * 32 * 8 * 128 * 2  # 128 KiB per token in bf16
    free = None if free_gib is None else int(free_gib * 2**30)
    size, why = choose_batch_size(free, cfg, frames=24, max_new_tokens=2048)
    assert size == want, why
    if free is not None:
        assert f"{row_bytes(cfg, 24, 2048) / 2**30:.2f} GiB per clip" in why


# ---- many clips through the service ----


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from cogvx.services.caption import CaptionService

    folder = tiny_caption_folder(tmp_path_factory.mktemp("w") / "caption")
    return CaptionService(str(folder), log=lambda _: None)


def _clip_files(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([1, 3, 2, 1, 4, 2, 1]):
        frames = rng.integers(0, 255, (8 * seconds, 32, 48, 3), dtype=np.uint8)
        paths.append(write_video(frames, root / f"clip{i}.mp4", fps=8))
    broken = root / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 255, 500, np.uint8)))
    cut = root / "cut.mp4"
    cut.write_bytes(paths[1].read_bytes()[:300])
    return paths[:3] + [broken] + paths[3:5] + [root / "missing.mp4", cut] + paths[5:]


def test_many_clips_in_order_with_error_rows(service, tmp_path):
    from cogvx.services.caption_batch import caption_many

    paths = _clip_files(tmp_path)
    rows = list(caption_many(service, paths, "Describe.", max_new_tokens=6, batch_size=3))
    assert [r.path for r in rows] == [str(p) for p in paths]
    bad = {r.path.rsplit("/", 1)[1]: r.error for r in rows if r.error}
    assert set(bad) == {"broken.mp4", "missing.mp4", "cut.mp4"}, bad
    good = [r for r in rows if not r.error]
    assert all(r.caption is not None and r.frames_used >= 1 for r in good)
    alone = {
        r.path: service.run(video=r.path, prompt="Describe.", strategy="chat", max_new_tokens=6,
                            temperature=0.0, top_p=1.0, seed=None)
        for r in good
    }  # fmt: skip
    assert {r.path: r.caption for r in good} == alone  # batched = one at a time
    # 'chat': one frame per whole second from 0 to round(2.875 s), so 4 frames for 3 s
    assert rows[1].frames_used == 4 and rows[1].duration == pytest.approx(3.0, abs=0.2)
    assert all(r.model == "THUDM/cogvlm2-llama3-caption" and r.strategy == "chat" for r in rows)


def test_a_clip_that_fails_in_the_model_fails_alone(service, tmp_path):
    from cogvx.services.caption_batch import caption_many

    paths = _clip_files(tmp_path)[:3]
    long_prompt = "describe " * 3000  # past the tiny model's 2048 positions: every clip fails
    rows = list(caption_many(service, paths, long_prompt, max_new_tokens=4, batch_size=2))
    assert [r.path for r in rows] == [str(p) for p in paths]
    assert all(r.error and "prompt is too long" in r.error for r in rows)
