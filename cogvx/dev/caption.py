"""A tiny random CogVLM2-Caption folder in the official layout (offline, seconds, deterministic).

The layout is that of THUDM/cogvlm2-llama3-caption (config.json with `vision_config`, the remote
code's tensor names: fused `language_expert_query_key_value`, `language_mlp`, the EVA2-CLIP tower
under `model.vision.`, per-layer `rotary_emb.inv_freq`, BF16), at the sizes of the golden fixture
(../shared/fixtures/cogvlm2). The tokenizer is a Llama-3-style byte-level BPE learnt here from a
fixed text: ids 0..N-1 are its own, the special tokens sit at 128000-128002 like Llama 3's.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"
SPECIAL_IDS = {BOS: 128000, EOS: 128001, PAD: 128002}
VOCAB_SIZE = 128256  # Llama 3's embedding rows (the ids between the tokenizer's and 128000 unused)
HIDDEN = 64
HEAD_SCALE = 4.0  # sharper logits over the tokenizer's own ids: greedy text is not a tie-break
MAX_MERGES = 256  # more than the text has: every word of it ends as one token
# Llama 3's pre-tokenizer split (tiktoken's cl100k pattern, as in its tokenizer.json).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# What the merges are learnt from: the demo's prompts and caption-like sentences (no digits: the
# two-digit numbers are added as merges of their own, for the 'chat' template's frame indices).
TRAINING_TEXT = """\
Question: Please describe this video in detail. Answer: The video shows a red ball rolling
across a wooden table while the camera pans slowly to the left. In the background a dog and a
cat are playing on the grass, and the light changes from warm to cool as the scene goes on.
What happens? A person walks into the room, picks up a blue cup and looks out of the window.
The camera follows a car driving along a road between green trees under a bright sky.
Describe the scene. A small bird sits on a branch, then flies away over the river.
"""

CONFIG: dict[str, Any] = {
    "architectures": ["CogVLMVideoForCausalLM"],
    "auto_map": {
        "AutoConfig": "configuration_cogvlm.CogVLMConfig",
        "AutoModelForCausalLM": "modeling_cogvlm.CogVLMVideoForCausalLM",
    },
    "bos_token_id": SPECIAL_IDS[BOS],
    "eos_token_id": SPECIAL_IDS[EOS],
    "pad_token_id": SPECIAL_IDS[PAD],
    "hidden_act": "silu",
    "hidden_size": HIDDEN,
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "max_position_embeddings": 2048,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_multi_query_heads": 2,
    "rms_norm_eps": 1e-05,
    "template_version": "base",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.4",
    "use_cache": True,
    "vision_config": {
        "dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 32,
        "image_size": 224,
        "in_channels": 3,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-06,
        "num_heads": 2,
        "num_hidden_layers": 2,
        "num_positions": (224 // 14) ** 2 + 1,
        "patch_size": 14,
    },
    "vocab_size": VOCAB_SIZE,
}
GENERATION_CONFIG: dict[str, Any] = {
    "_from_model_config": True,
    "bos_token_id": SPECIAL_IDS[BOS],
    "eos_token_id": SPECIAL_IDS[EOS],
    "pad_token_id": SPECIAL_IDS[PAD],
    "transformers_version": "4.43.4",
}
SPECIAL_TOKENS_MAP = {"bos_token": BOS, "eos_token": EOS}
ROPE_THETA = 500000.0
TensorSpec = tuple[str, tuple[int, ...], str]  # (official key, shape, init kind)


def tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json as the original's (clean_up_tokenization_spaces on)."""
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    return {
        "added_tokens_decoder": {
            str(i): {"content": tok, **flags, "special": True} for tok, i in SPECIAL_IDS.items()
        },
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOS,
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, in its order (Llama 3's ids 0..255)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )


def learn_merges(
    words: Mapping[str, int] | Mapping[tuple[str, ...], int], limit: int
) -> list[tuple[str, str]]:
    """Byte-pair merges of `words` (byte-level strings, or tuples of symbols): most frequent
    pair first, ties by the pair's text, until `limit` merges or every word is one symbol (pure
    Python: deterministic)."""
    split = {tuple(word): n for word, n in words.items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < limit:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in split.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        split = {_merge(symbols, best): n for symbols, n in split.items()}
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def tiny_caption_tokenizer(text: str = TRAINING_TEXT, max_merges: int = MAX_MERGES) -> Tokenizer:
    """A Llama-3-format tokenizer: byte-level BPE (256 bytes + merges learnt from `text` + the
    numbers 10..99), the Llama 3 split, ignore_merges, a bos template, specials at 128000+."""
    pre = _pre_tokenizer()
    words = Counter(piece for piece, _ in pre.pre_tokenize_str(text))
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    merges = learn_merges(words, max_merges)
    merges += [(str(n // 10), str(n % 10)) for n in range(10, 100)]
    kept: list[tuple[str, str]] = []
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            kept.append((a, b))
    vocab.update(SPECIAL_IDS)  # in the model's vocabulary and in added_tokens, like Llama 3's
    tok = Tokenizer(models.BPE(vocab=vocab, merges=kept, ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
            processors.TemplateProcessing(
                single=f"{BOS} $A",
                pair=f"{BOS} $A {BOS} $B:1",
                special_tokens=[(BOS, SPECIAL_IDS[BOS])],
            ),
        ]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_IDS])
    return tok


def own_vocab_size(tok: Tokenizer) -> int:
    """How many ids the tokenizer has below the special ones (0..n-1, no gaps)."""
    return 1 + max(i for i in tok.get_vocab().values() if i < min(SPECIAL_IDS.values()))


def tensor_specs(cfg: dict[str, Any]) -> list[TensorSpec]:
    """(official key, shape, init kind) of every tensor of the caption checkpoint."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vision_config"]
    hd = h // cfg["num_attention_heads"]
    qkv = (cfg["num_attention_heads"] + 2 * cfg["num_multi_query_heads"]) * hd
    specs: list[TensorSpec] = [("lm_head.weight", (cfg["vocab_size"], h), "head")]
    specs.append(("model.embed_tokens.weight", (cfg["vocab_size"], h), "embedding"))
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        specs += [
            (p + "input_layernorm.weight", (h,), "gain"),
            (p + "mlp.language_mlp.down_proj.weight", (h, inter), "linear"),
            (p + "mlp.language_mlp.gate_proj.weight", (inter, h), "linear"),
            (p + "mlp.language_mlp.up_proj.weight", (inter, h), "linear"),
            (p + "post_attention_layernorm.weight", (h,), "gain"),
            (p + "self_attn.language_expert_dense.weight", (h, h), "linear"),
            (p + "self_attn.language_expert_query_key_value.weight", (qkv, h), "linear"),
            (p + "self_attn.rotary_emb.inv_freq", (hd // 2,), "inv_freq"),
        ]
    specs.append(("model.norm.weight", (h,), "gain"))
    vh, vi, ps = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    p = "model.vision."
    specs += [
        (p + "boi", (1, 1, h), "normal"),
        (p + "conv.bias", (vh,), "bias"),
        (p + "conv.weight", (vh, vh, 2, 2), "linear"),
        (p + "eoi", (1, 1, h), "normal"),
        (p + "linear_proj.dense_4h_to_h.weight", (h, inter), "linear"),
        (p + "linear_proj.dense_h_to_4h.weight", (inter, h), "linear"),
        (p + "linear_proj.gate_proj.weight", (inter, h), "linear"),
        (p + "linear_proj.linear_proj.weight", (h, vh), "linear"),
        (p + "linear_proj.norm1.bias", (h,), "bias"),
        (p + "linear_proj.norm1.weight", (h,), "gain"),
        (p + "patch_embedding.cls_embedding", (1, vh), "normal"),
        (p + "patch_embedding.position_embedding.weight", (v["num_positions"], vh), "position"),
        (p + "patch_embedding.proj.bias", (vh,), "bias"),
        (p + "patch_embedding.proj.weight", (vh, v["in_channels"], ps, ps), "linear"),
    ]
    for n in range(v["num_hidden_layers"]):
        q = f"{p}transformer.layers.{n}."
        specs += [
            (q + "attention.dense.bias", (vh,), "bias"),
            (q + "attention.dense.weight", (vh, vh), "linear"),
            (q + "attention.query_key_value.bias", (3 * vh,), "bias"),
            (q + "attention.query_key_value.weight", (3 * vh, vh), "linear"),
            (q + "input_layernorm.bias", (vh,), "bias"),
            (q + "input_layernorm.weight", (vh,), "gain"),
            (q + "mlp.fc1.bias", (vi,), "bias"),
            (q + "mlp.fc1.weight", (vi, vh), "linear"),
            (q + "mlp.fc2.bias", (vh,), "bias"),
            (q + "mlp.fc2.weight", (vh, vi), "linear"),
            (q + "post_attention_layernorm.bias", (vh,), "bias"),
            (q + "post_attention_layernorm.weight", (vh,), "gain"),
        ]
    return specs


def tiny_caption_state(
    seed: int = 0, own_vocab: int | None = None, cfg: dict[str, Any] = CONFIG
) -> dict[str, torch.Tensor]:
    """Random BF16 tensors under the official keys, drawn like the fixture's: linear/conv
    N(0,1)/sqrt(fan_in), norm gains 1+0.2N, biases 0.1N, embeddings/boi/eoi/cls N(0,1), ViT
    positions 0.5N, the pad row zero. The LM head keeps only rows below `own_vocab`, x4."""
    gen = torch.Generator().manual_seed(seed)
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    state: dict[str, torch.Tensor] = {}
    for key, shape, kind in tensor_specs(cfg):
        if kind == "inv_freq":
            x = 1.0 / ROPE_THETA ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        else:
            x = torch.randn(shape, generator=gen)
        if kind in ("linear", "head"):
            x = x / (torch.tensor(shape[1:]).prod().item() ** 0.5)
        elif kind == "gain":
            x = 1 + 0.2 * x
        elif kind == "bias":
            x = 0.1 * x
        elif kind == "position":
            x = 0.5 * x
        elif kind == "embedding":
            x[cfg["pad_token_id"]] = 0
        if kind == "head" and own_vocab is not None:
            x[own_vocab:] = 0
            x = x * HEAD_SCALE
        state[key] = x.to(torch.bfloat16).contiguous()
    return state


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented UTF-8 JSON with a final newline (the tiny folders' files)."""
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_tiny_caption_weights(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny CogVLM2-Caption folder (same seed: byte-identical files); return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_caption_tokenizer()
    tok.save(str(out / "tokenizer.json"), pretty=True)
    write_json(out / "tokenizer_config.json", tokenizer_config())
    write_json(out / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    write_json(out / "config.json", CONFIG)
    write_json(out / "generation_config.json", GENERATION_CONFIG)
    state = tiny_caption_state(seed, own_vocab_size(tok))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
