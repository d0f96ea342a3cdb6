"""A tiny random FLUX.1-dev pipeline folder for the LLM -> FLUX -> CogVideoX tests (offline).

Every component starts from black-forest-labs/FLUX.1-dev's released config (below, full size)
with only its sizes shrunk: the transformer keeps guidance embeddings, patch size 1, 64 packed
input channels and RoPE axes in FLUX's 16:56:56 ratio of the head dim; the VAE keeps 16 latent
channels, 4 blocks (8x down) and FLUX's scaling/shift factors; the scheduler config is the
release's. The CLIP tokenizer is a CLIP-format byte-level BPE (`</w>` word ends) learnt here from
a fixed text, the T5 one `cogvx.dev.tiny`'s in-memory unigram vocabulary. FLUX packs 2x2
latents of an 8x VAE: heights and widths must be multiples of 16 (720x480 and 64x96 are).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch

from cogvx.cogvideox.released import text_encoder_config
from cogvx.dev.caption import bytes_to_unicode, learn_merges
from cogvx.dev.tiny import TINY_LAYERS, tiny_tokenizer

TINY_FLUX_HEIGHT, TINY_FLUX_WIDTH = 64, 96  # the smallest sizes are multiples of 16; non-square
SIZE_MULTIPLE = 16  # the VAE's 8x times FLUX's 2x2 packing
CLIP_DIM, T5_DIM = 32, 32  # tiny tiny_text_encoder's d_model is cogvx.dev.tiny.TEXT_DIM
T5_MAX_TOKENS = 512  # FLUX.1-dev's tokenizer_2 model_max_length
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_MERGES = 1000  # more than the text has: every word of it ends as one token
TRAINING_TEXT = """\
A photo of a cat sitting on a wooden table next to a window, soft morning light.
A golden retriever runs along a sunny beach while waves roll in behind it, cinematic.
A young woman in a red coat walks through a quiet snowy forest at dusk, highly detailed.
A small boat on a calm blue lake at dawn, mist rising from the water, green hills far away.
A busy city street at night with bright signs, people with umbrellas and cars in the rain.
"""

# FLUX.1-dev's released component configs (transformer/, vae/, scheduler/, text_encoder/).
FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 128,
    "axes_dims_rope": [16, 56, 56],
    "guidance_embeds": True,
    "in_channels": 64,
    "joint_attention_dim": 4096,
    "num_attention_heads": 24,
    "num_layers": 19,
    "num_single_layers": 38,
    "patch_size": 1,
    "pooled_projection_dim": 768,
}
FLUX1_DEV_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}
FLUX1_DEV_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
FLUX1_DEV_CLIP: dict[str, Any] = {  # openai/clip-vit-large-patch14's text tower
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,  # not the tokenizer's: CLIP pools at argmax(input_ids), the last id
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}
SIZE_FIELDS: dict[str, frozenset[str]] = {
    "transformer": frozenset(
        {
            "attention_head_dim",
            "axes_dims_rope",
            "joint_attention_dim",
            "num_attention_heads",
            "num_layers",
            "num_single_layers",
            "pooled_projection_dim",
        }
    ),
    "vae": frozenset({"block_out_channels", "layers_per_block", "norm_num_groups"}),
    "scheduler": frozenset(),
    "text_encoder": frozenset(
        {
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
            "projection_dim",
            "vocab_size",
        }
    ),
}
TINY_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 32,
    "axes_dims_rope": [4, 14, 14],  # 16:56:56 of 128, scaled to a 32-dim head
    "joint_attention_dim": T5_DIM,
    "num_attention_heads": 2,
    "num_layers": TINY_LAYERS,
    "num_single_layers": TINY_LAYERS,
    "pooled_projection_dim": CLIP_DIM,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}
TINY_CLIP: dict[str, Any] = {
    "hidden_size": CLIP_DIM,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "projection_dim": CLIP_DIM,
}


def _clip_words(text: str) -> Counter[tuple[str, ...]]:
    """`text` normalized and split by CLIPTokenizer's own pipeline (NFC, lowercase, its split,
    byte level), each word as symbols with `</w>` on the last one."""
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[]).backend_tokenizer
    normalized = backend.normalizer.normalize_str(text)
    words: Counter[tuple[str, ...]] = Counter()
    for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized):
        words[(*word[:-1], word[-1] + "</w>")] += 1
    return words


def tiny_clip_tokenizer(text: str = TRAINING_TEXT, max_merges: int = MAX_MERGES) -> Any:
    """A CLIPTokenizer in CLIP's vocab layout: 256 bytes, the 256 bytes + `</w>`, the merges
    learnt from `text`, then <|startoftext|> and <|endoftext|> as the last ids; 77 tokens."""
    from transformers import CLIPTokenizer

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate([*chars, *(c + "</w>" for c in chars)])}
    kept: list[tuple[str, str]] = []
    for a, b in learn_merges(_clip_words(text), max_merges):
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            kept.append((a, b))
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    merges: Any = kept  # pairs, as tokenizers' BPE takes them (typed as "a b" strings)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=77,
        do_lower_case=True,
        errors="replace",
    )


def tiny_clip_text_encoder(vocab_size: int, seed: int = 0) -> Any:
    """FLUX.1-dev's CLIP-L text config shrunk (hidden 32, 2 layers), in eval mode."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = {**FLUX1_DEV_CLIP, **TINY_CLIP, "vocab_size": vocab_size}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(CLIPTextConfig(**cfg)).eval()


def tiny_t5_text_encoder(vocab_size: int, seed: int = 0) -> Any:
    """The T5-v1.1-XXL encoder config (FLUX's text_encoder_2, as CogVideoX's) shrunk."""
    from transformers import T5Config, T5EncoderModel

    cfg = text_encoder_config()
    cfg.update(vocab_size=vocab_size, d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return T5EncoderModel(T5Config(**cfg)).eval()


def tiny_flux_transformer(seed: int = 0) -> Any:
    """FLUX.1-dev's transformer config with its sizes shrunk (TINY_TRANSFORMER), in eval mode."""
    from diffusers import FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FluxTransformer2DModel(**{**FLUX1_DEV_TRANSFORMER, **TINY_TRANSFORMER}).eval()


def tiny_flux_vae(seed: int = 0) -> Any:
    """FLUX.1-dev's VAE config (16 latent channels, 0.3611/0.1159) shrunk, in eval mode."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**{**FLUX1_DEV_VAE, **TINY_VAE}).eval()


def meta_flux_transformer() -> Any:
    """The full-size FLUX.1-dev transformer on the meta device (shapes, no memory)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**FLUX1_DEV_TRANSFORMER)


def build_tiny_flux(seed: int = 0) -> Any:
    """A FluxPipeline with tiny random weights (components seeded from `seed`), in eval mode."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    clip_tok = tiny_clip_tokenizer()
    t5_tok = tiny_tokenizer(T5_MAX_TOKENS)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_DEV_SCHEDULER),
        vae=tiny_flux_vae(seed + 1),
        text_encoder=tiny_clip_text_encoder(len(clip_tok), seed),
        tokenizer=clip_tok,
        text_encoder_2=tiny_t5_text_encoder(len(t5_tok), seed + 3),
        tokenizer_2=t5_tok,
        transformer=tiny_flux_transformer(seed + 2),
    )


def save_tiny_flux(out_dir: str | Path, seed: int = 0) -> Path:
    """Save the tiny FLUX.1-dev pipeline folder (diffusers layout) and return it."""
    out = Path(out_dir)
    build_tiny_flux(seed).save_pretrained(out)
    return out
