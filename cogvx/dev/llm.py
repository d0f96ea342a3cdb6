"""A tiny random Qwen2.5-7B-Instruct folder for the prompt-LLM tests (offline, seconds, seeded).

The architecture is Qwen/Qwen2.5-7B-Instruct's (`Qwen2ForCausalLM`, its config.json below as
QWEN25_7B_INSTRUCT, full size, for meta-device benchmarks) with only the sizes shrunk. The
tokenizer is a Qwen2-format byte-level BPE learnt here from a fixed English text: ids 0..N-1 are
its own, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` in Qwen's order, and the ChatML
chat template of Qwen2.5 (without the tool-calling branches). Weights are BF16 safetensors drawn
from a seeded generator (same seed: byte-identical files); the LM head keeps only the rows of
whole words of the text and `<|im_end|>`, so greedy output is readable words.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from cogvx.dev.caption import bytes_to_unicode, learn_merges, write_json

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (ENDOFTEXT, IM_START, IM_END)  # Qwen's order (151643, 151644, 151645 when real)
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2's pre-tokenizer split (its tokenizer.json): like cl100k's but one digit a piece.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
WORD = re.compile(r"Ġ[A-Za-z]+")  # a byte-level piece " word"
VOCAB_MULTIPLE = 64  # the embedding is padded past the tokenizer, as Qwen's 152064 rows are
HEAD_SCALE = 4.0  # sharper logits over the kept rows: greedy text is not a tie-break
IM_END_SCALE = 0.85  # <|im_end|>'s head row against a word's: reachable, rarely first
MAX_MERGES = 1000  # more than the text has: every word of it ends as one token
# What the merges are learnt from: the chat template's words and video-prompt-like sentences.
TRAINING_TEXT = f"""\
system
{DEFAULT_SYSTEM}
user
assistant
You are a prompt engineer. Rewrite the user's short idea as one detailed video prompt.
A golden retriever runs along a sunny beach, its fur blowing in the wind, while waves roll
in behind it. The camera tracks the dog from a low angle as the light turns warm at sunset.
A young woman in a red coat walks through a quiet snowy forest, her breath visible in the
cold air. Tall pine trees frame the path and soft flakes drift slowly down around her.
A small boat sails across a calm blue lake at dawn, mist rising from the water, with green
hills and a wooden house on the far shore. Birds fly low over the surface in the distance.
A busy city street at night is full of bright signs, people with umbrellas and cars moving
through the rain. The scene is cinematic, with rich colors, sharp detail and gentle motion.
"""

# Qwen/Qwen2.5-7B-Instruct's config.json (what the release ships; sizes are the real ones).
QWEN25_7B_INSTRUCT: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}
# Its generation_config.json (ids: <|endoftext|> 151643, <|im_end|> 151645).
QWEN25_7B_INSTRUCT_GENERATION: dict[str, Any] = {
    "bos_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "pad_token_id": 151643,
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
    "transformers_version": "4.37.0",
}
# The fields the tiny folder changes: sizes, and the special ids (same tokens, fewer ids below).
SIZE_FIELDS = frozenset(
    {
        "hidden_size",
        "intermediate_size",
        "max_window_layers",
        "num_attention_heads",
        "num_hidden_layers",
        "num_key_value_heads",
        "vocab_size",
    }
)
ID_FIELDS = frozenset({"bos_token_id", "eos_token_id", "pad_token_id"})
TINY_SIZES: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "max_window_layers": 2,  # = the layer count, as 28 is at full size (no sliding layer)
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
}
# Qwen2.5's ChatML template, its no-tools branches (the default system turn included).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first)"
    " or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def _pieces(text: str) -> list[str]:
    """`text` split by the Qwen2 pre-tokenizer, as byte-level strings."""
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def tiny_qwen_tokenizer(text: str = TRAINING_TEXT, max_merges: int = MAX_MERGES) -> Tokenizer:
    """A Qwen2-format tokenizer: NFC, the Qwen2 split, byte-level BPE (256 bytes + merges learnt
    from `text`), a ByteLevel post-processor (no BOS), the three specials after the BPE ids."""
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    kept: list[tuple[str, str]] = []
    for a, b in learn_merges(Counter(_pieces(text)), max_merges):
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            kept.append((a, b))
    bpe = models.BPE(
        vocab=vocab,
        merges=kept,
        continuing_subword_prefix="",
        end_of_word_suffix="",
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.post_processor = processors.ByteLevel(
        add_prefix_space=False, trim_offsets=False, use_regex=False
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """The ids of <|endoftext|>, <|im_start|>, <|im_end|> in `tok`."""
    ids = {t: tok.token_to_id(t) for t in SPECIALS}
    return {t: i for t, i in ids.items() if i is not None}


def word_ids(tok: Tokenizer, text: str = TRAINING_TEXT) -> list[int]:
    """Sorted ids of the space-led words of `text` ("Ġcat": letters only) that are one token."""
    vocab = tok.get_vocab()
    words = {p for p in _pieces(text) if WORD.fullmatch(p)}
    return sorted(vocab[w] for w in words if w in vocab)


def tiny_config(tok: Tokenizer) -> dict[str, Any]:
    """QWEN25_7B_INSTRUCT with the tiny sizes and `tok`'s special ids (vocab padded to 64)."""
    ids = special_ids(tok)
    cfg = {**QWEN25_7B_INSTRUCT, **TINY_SIZES}
    cfg.update(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        vocab_size=math.ceil(tok.get_vocab_size() / VOCAB_MULTIPLE) * VOCAB_MULTIPLE,
    )
    return cfg


def generation_config(tok: Tokenizer) -> dict[str, Any]:
    """QWEN25_7B_INSTRUCT_GENERATION with `tok`'s ids."""
    ids = special_ids(tok)
    gen = dict(QWEN25_7B_INSTRUCT_GENERATION)
    gen.update(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
    )
    return gen


def tokenizer_config(tok: Tokenizer) -> dict[str, Any]:
    """tokenizer_config.json like Qwen2.5-7B-Instruct's (its three specials only)."""
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": t, **flags, "special": True} for t, i in special_ids(tok).items()
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def meta_qwen25_7b() -> Any:
    """The full-size Qwen2.5-7B-Instruct on the meta device: shapes without memory or weights."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        return Qwen2ForCausalLM(Qwen2Config(**QWEN25_7B_INSTRUCT))


def _shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of Qwen2ForCausalLM built from `cfg` (on the meta device), by its key."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**cfg))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tiny_llm_state(
    cfg: dict[str, Any], head_rows: dict[int, float], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random BF16 tensors in key order: linear N(0,1)/sqrt(fan_in), q/k/v biases 0.1N, norm
    gains 1+0.2N, embeddings N(0,1); the LM head's rows x HEAD_SCALE x `head_rows[id]`, the rows
    not in `head_rows` zero."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in sorted(_shapes(cfg).items()):
        x = torch.randn(shape, generator=gen)
        if key.endswith("norm.weight"):
            x = 1 + 0.2 * x
        elif key.endswith(".bias"):
            x = 0.1 * x
        elif key == "lm_head.weight":
            mask = torch.zeros(shape[0], 1)
            for row, scale in head_rows.items():
                mask[row] = scale
            x = x * mask * HEAD_SCALE / shape[1] ** 0.5
        elif key != "model.embed_tokens.weight":
            x = x / shape[1] ** 0.5
        state[key] = x.to(torch.bfloat16).contiguous()
    return state


def save_tiny_llm(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny Qwen2.5-7B-Instruct folder (same seed: byte-identical files); return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_qwen_tokenizer()
    tok.save(str(out / "tokenizer.json"), pretty=True)
    model = json.loads(tok.to_str())["model"]
    write_json(out / "vocab.json", model["vocab"])
    merges = ["#version: 0.2", *(" ".join(m) for m in model["merges"])]
    (out / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    write_json(out / "tokenizer_config.json", tokenizer_config(tok))
    cfg = tiny_config(tok)
    write_json(out / "config.json", cfg)
    write_json(out / "generation_config.json", generation_config(tok))
    rows = {i: 1.0 for i in word_ids(tok)} | {special_ids(tok)[IM_END]: IM_END_SCALE}
    state = tiny_llm_state(cfg, rows, seed)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
