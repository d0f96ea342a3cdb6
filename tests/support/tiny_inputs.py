"""Transformer inputs for the tiny models (attention, quantization and CUDA tests)."""

from __future__ import annotations

import torch

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH


def transformer_inputs(pipe, frames: int) -> dict:
    """A batch of two (as with CFG) at the tiny size, with the pipeline's own RoPE tables."""
    cfg = pipe.transformer.config
    latent_frames = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    if cfg.patch_size_t:
        latent_frames += latent_frames % cfg.patch_size_t
    h, w = TINY_HEIGHT // pipe.vae_scale_factor_spatial, TINY_WIDTH // pipe.vae_scale_factor_spatial
    g = torch.Generator("cpu").manual_seed(3)
    kwargs = {
        "hidden_states": torch.randn(2, latent_frames, cfg.in_channels, h, w, generator=g),
        "encoder_hidden_states": torch.randn(
            2, cfg.max_text_seq_length, cfg.text_embed_dim, generator=g
        ),
        "timestep": torch.tensor([999, 10]),
        "image_rotary_emb": None,
        "return_dict": False,
    }
    if cfg.use_rotary_positional_embeddings:
        kwargs["image_rotary_emb"] = pipe._prepare_rotary_positional_embeddings(
            TINY_HEIGHT, TINY_WIDTH, latent_frames, torch.device("cpu")
        )
    if cfg.ofs_embed_dim:
        kwargs["ofs"] = torch.full((2,), 2.0)
    return kwargs


def bf16_transformer_inputs(pipe, frames: int) -> dict:
    """`transformer_inputs` with the floating-point tensors in bf16 (the quantization tests)."""
    return {
        k: v.to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        for k, v in transformer_inputs(pipe, frames).items()
    }
