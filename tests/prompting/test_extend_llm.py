"""Prompt extension with a real (tiny, random) Qwen2.5-shaped chat model, in-process and as the
video service runs it."""

from __future__ import annotations

import pytest

from cogvx.dev.llm import save_tiny_llm
from cogvx.errors import InputError, SetupError
from cogvx.prompting.extend import PromptExtender


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    return save_tiny_llm(tmp_path_factory.mktemp("llm") / "llm")


@pytest.fixture(scope="module")
def extender(llm_folder):
    logs: list[str] = []
    ext = PromptExtender.load(llm_folder, None, logs.append)
    ext.logs = logs  # type: ignore[attr-defined]
    return ext


def words(text: str) -> int:
    return len(text.split()) + 1


def test_extension_is_greedy_reproducible_and_logged(extender):
    a = extender.extend("a cat on the dog", words, 226)
    b = extender.extend("a cat on the dog", words, 226)
    assert a == b and a and a != "a cat on the dog"
    assert any(m.startswith("extended prompt (") for m in extender.logs)
    assert any("Qwen2ForCausalLM" in m and "no CUDA device" in m for m in extender.logs)


def test_extension_is_cut_to_the_video_models_window(extender):
    full = extender.extend("a dog in the sea", words, 226)
    cut = extender.extend("a dog in the sea", words, 3)
    assert words(cut) <= 3 and full.startswith(cut)
    assert "cut to 3 T5 tokens" in extender.logs[-1]


def test_the_chat_has_our_system_prompt_and_the_image_hint(extender):
    chat = extender.messages("waves", image=True)
    assert chat[0]["role"] == "system" and "150 words" in chat[0]["content"]
    assert chat[1]["content"].startswith("The video starts from a given first frame")
    text = extender.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>system" in text and text.rstrip().endswith("<|im_start|>assistant")


def test_a_folder_that_is_not_a_chat_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SetupError, match="cannot load it as a transformers chat model"):
        PromptExtender.load(tmp_path, None, print)


def test_the_video_service_extends_only_when_asked_and_configured(
    llm_folder, tmp_path, monkeypatch
):
    from cogvx.dev.tiny import save_tiny_weights
    from cogvx.services.video import VideoService

    monkeypatch.setenv("COGVX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COGVX_OUTPUT_DIR", str(tmp_path / "out"))
    weights = save_tiny_weights("t2v-5b", tmp_path / "w")
    run = dict(prompt="a cat", negative_prompt="", num_frames=9, num_inference_steps=2,
               guidance_scale=6.0, use_dynamic_cfg=True, seed=1, fps=8, output_format="mp4",
               output_quality=80, fast_mode="off")  # fmt: skip
    monkeypatch.delenv("COGVX_PROMPT_WEIGHTS", raising=False)
    plain_logs: list[str] = []
    plain = VideoService("t2v-5b", str(weights), log=plain_logs.append)
    with pytest.raises(InputError, match="COGVX_PROMPT_WEIGHTS"):
        plain.run(**run, extend_prompt=True)
    monkeypatch.setenv("COGVX_PROMPT_WEIGHTS", str(llm_folder))
    logs: list[str] = []
    service = VideoService("t2v-5b", str(weights), log=logs.append)
    a = service.run(**run, extend_prompt=True).read_bytes()
    line = next(m for m in logs if m.startswith("extended prompt: "))
    assert len(line) > len("extended prompt: a cat")
    b = service.run(**run, extend_prompt=True).read_bytes()
    c = service.run(**run).read_bytes()
    assert a == b  # greedy extension + same seed: the same file
    assert a != c  # the extension changed what was generated
    assert c == plain.run(**run).read_bytes()  # off: exactly the plain prompt
    before = len(logs)
    with pytest.raises(ValueError, match="guidance_scale"):  # refused before the LLM runs
        service.run(**{**run, "guidance_scale": 25.0}, extend_prompt=True)
    assert not any("LLM tokens" in m for m in logs[before:])
