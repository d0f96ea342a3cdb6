"""The tiny Qwen2.5-7B-Instruct folder built offline (cogvx.dev.llm, tools/make_tiny_weights.py
--model llm): the Auto classes load it with no remote code, the ChatML template renders, greedy
generation gives words, the config is the release's but for sizes, byte-identical by seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from cogvx.dev.llm import (
    ID_FIELDS,
    QWEN25_7B_INSTRUCT,
    SIZE_FIELDS,
    meta_qwen25_7b,
    save_tiny_llm,
)

REPO = Path(__file__).resolve().parents[2]
FILES = {
    "config.json",
    "generation_config.json",
    "merges.txt",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
}
MESSAGES = [
    {"role": "system", "content": "You are a prompt engineer."},
    {"role": "user", "content": "A red car drives through the rain at night."},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_llm(tmp_path_factory.mktemp("tiny-llm") / "qwen")


@pytest.fixture(scope="module")
def tokenizer(folder):
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@pytest.fixture(scope="module")
def model(folder):
    return AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---- the release's config, shrunk ----


def test_config_is_the_releases_but_for_sizes_and_ids(folder):
    ours = json.loads((folder / "config.json").read_text())
    assert ours.keys() == QWEN25_7B_INSTRUCT.keys()
    for key in ours.keys() - SIZE_FIELDS - ID_FIELDS:
        assert ours[key] == QWEN25_7B_INSTRUCT[key], key
    assert ours["architectures"] == ["Qwen2ForCausalLM"] and ours["model_type"] == "qwen2"
    assert (ours["rope_theta"], ours["rms_norm_eps"], ours["hidden_act"]) == (1e6, 1e-6, "silu")
    assert not ours["tie_word_embeddings"] and not ours["use_sliding_window"]
    sizes = {k: ours[k] for k in SIZE_FIELDS - {"vocab_size"}}
    assert sizes == {
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_window_layers": 2,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
    }
    assert 300 <= ours["vocab_size"] <= 1000 and ours["vocab_size"] % 64 == 0


def test_full_size_config_on_the_meta_device_is_7_6b_parameters():
    model = meta_qwen25_7b()
    n = sum(p.numel() for p in model.parameters())
    assert 7.6e9 < n < 7.63e9  # Qwen2.5-7B: 7.61 B with the untied 152064-row head
    assert next(model.parameters()).device.type == "meta"


def test_special_ids_follow_qwens_pattern(folder, tokenizer):
    cfg = json.loads((folder / "config.json").read_text())
    gen = json.loads((folder / "generation_config.json").read_text())
    eot, start, end = tokenizer.convert_tokens_to_ids(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    )
    assert (start, end) == (eot + 1, eot + 2)  # Qwen's 151643/151644/151645, right after BPE
    assert len(tokenizer) == eot + 3 <= cfg["vocab_size"]
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (eot, end)
    assert gen["eos_token_id"] == [end, eot] and gen["pad_token_id"] == gen["bos_token_id"] == eot
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>", "<|endoftext|>", None,
    )  # fmt: skip


# ---- loading, the chat template, generation ----


def test_auto_classes_load_a_qwen2_model_in_bf16(model, tokenizer):
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.dtype == torch.bfloat16
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"


def test_chat_template_is_chatml_with_the_generation_prompt(tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a prompt engineer.<|im_end|>\n"
        "<|im_start|>user\nA red car drives through the rain at night.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    default = tokenizer.apply_chat_template(MESSAGES[1:], tokenize=False)
    assert default.startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\n"
    ) and not default.endswith("assistant\n")
    ids = tokenizer(text).input_ids
    assert (
        tokenizer.decode(ids) == text
        and ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    )
    assert len(ids) < 40  # the template's and the prompt's words were learnt as merges
    assert tokenizer.decode(tokenizer("héllo ✓ 12 345").input_ids) == "héllo ✓ 12 345"  # bytes


def test_greedy_generation_is_readable_words(model, tokenizer):
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False)
    new = out[0, enc.input_ids.shape[1] :]
    words = tokenizer.decode(new, skip_special_tokens=True)
    assert words.strip() and words.startswith(" ")
    assert all(w.isalpha() for w in words.split()), words  # whole words of the learnt text
    again = model.generate(**enc, max_new_tokens=40, do_sample=False)
    assert torch.equal(out, again)


def test_head_keeps_word_rows_and_im_end(folder, tokenizer):
    head = _tensors(folder / "model.safetensors")["lm_head.weight"]
    kept = {int(i) for i in head.abs().sum(1).nonzero()}
    end, eot = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert end in kept and eot not in kept  # <|im_end|> can stop generation
    assert all(tokenizer.convert_ids_to_tokens(i).lstrip("Ġ").isalpha() for i in kept - {end})
    assert 50 < len(kept) < len(tokenizer) / 2  # no bytes, no word pieces, no unused rows


# ---- determinism and the CLI ----


def test_cli_writes_the_same_bytes_and_other_seeds_other_weights(folder, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tiny_weights.py"), "--model", "llm",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote tiny llm to {out}" in done.stdout
    assert {p.name for p in out.iterdir()} == FILES
    for name in FILES:  # another process, the same seed: byte-identical
        assert (out / name).read_bytes() == (folder / name).read_bytes(), name
    other = save_tiny_llm(tmp_path / "seed1", seed=1)
    ours, theirs = _tensors(folder / "model.safetensors"), _tensors(other / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"], theirs[
        "model.layers.0.self_attn.q_proj.weight"
    ])  # fmt: skip
    for name in FILES - {"model.safetensors"}:  # the tokenizer and configs do not depend on it
        assert (other / name).read_bytes() == (folder / name).read_bytes(), name
