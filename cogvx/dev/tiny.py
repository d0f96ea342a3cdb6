"""Tiny randomly-initialised pipelines with the real layout of every variant (offline, seconds)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from cogvx.cogvideox.released import text_encoder_config, transformer_config, vae_config
from cogvx.models import (
    FOLDER_OVERRIDES,
    RELEASE_SCHEDULER,
    Variant,
    get_variant,
    scheduler_config,
)

TINY_HEIGHT, TINY_WIDTH = 32, 48  # non-square, so height/width mix-ups show
TEXT_DIM = 32
TINY_LAYERS = 2  # First Block Cache (fast_mode=fast) needs a block after the first to skip


def tiny_tokenizer(max_tokens: int = 226):
    """A T5 tokenizer with an in-memory unigram vocabulary (no file, no hub)."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    vocab += [("▁" + c, -4.0) for c in string.ascii_lowercase]
    vocab += [("▁" + w, -3.0) for w in ("a", "the", "cat", "dog", "on", "in", "of", "and")]
    return T5Tokenizer(vocab=vocab, extra_ids=3, model_max_length=max_tokens)


def tiny_text_encoder(vocab_size: int, seed: int = 0):
    """The released T5 config (gated GELU, 32 buckets, ...) shrunk to 1 layer, in eval mode."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = text_encoder_config()
    cfg.update(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    return T5EncoderModel(T5Config(**cfg)).eval()


def save_tiny_t5(out_dir: str | Path, max_tokens: int = 226) -> None:
    """Write `text_encoder/` and `tokenizer/` subfolders (for tools that need a T5 path)."""
    out = Path(out_dir)
    tok = tiny_tokenizer(max_tokens)
    tok.save_pretrained(out / "tokenizer")
    tiny_text_encoder(len(tok)).save_pretrained(out / "text_encoder")


def _transformer(v: Variant, seed: int):
    """The released transformer config with only its sizes shrunk (see SIZE_FIELDS)."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    cfg = transformer_config(v.name)
    cfg.update(
        num_attention_heads=2,
        attention_head_dim=16,
        time_embed_dim=16,
        text_embed_dim=TEXT_DIM,
        num_layers=TINY_LAYERS,
        sample_height=TINY_HEIGHT // 8,
        sample_width=TINY_WIDTH // 8,
    )
    if cfg["patch_size_t"]:
        # 1.5's RoPE base grid is square and larger than any output (300x300 latents when real);
        # the tiny one covers every size the 1.5-I2V aspect rule can pick.
        side = 2 * max(TINY_HEIGHT, TINY_WIDTH) // 8
        cfg.update(sample_height=side, sample_width=side)
    if cfg["ofs_embed_dim"]:
        cfg.update(ofs_embed_dim=16)
    return CogVideoXTransformer3DModel(**cfg).eval()


def _vae(v: Variant, seed: int):
    """The released VAE config with only its sizes shrunk."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    cfg = vae_config(v.name)
    cfg.update(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        sample_height=TINY_HEIGHT,
        sample_width=TINY_WIDTH,
    )
    return AutoencoderKLCogVideoX(**cfg).eval()


def _scheduler(v: Variant):
    """What the released folders ship (DDIM for every model); the loader swaps in v.scheduler."""
    import diffusers

    return getattr(diffusers, RELEASE_SCHEDULER)(**scheduler_config(v))


def build_tiny_pipeline(model: str, seed: int = 0):
    """The variant's diffusers pipeline with tiny random weights, in eval mode."""
    import diffusers

    v = get_variant(model)
    tokenizer = tiny_tokenizer(v.max_tokens)
    cls = getattr(diffusers, v.pipeline)
    return cls(
        tokenizer=tokenizer,
        text_encoder=tiny_text_encoder(len(tokenizer), seed),
        vae=_vae(v, seed + 1),
        transformer=_transformer(v, seed + 2),
        scheduler=_scheduler(v),
    )


def save_tiny_weights(model: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny pipeline folder (+ cogvx.json with its native size) and return it."""
    out = Path(out_dir)
    build_tiny_pipeline(model, seed).save_pretrained(out)
    (out / FOLDER_OVERRIDES).write_text(json.dumps({"height": TINY_HEIGHT, "width": TINY_WIDTH}))
    return out
