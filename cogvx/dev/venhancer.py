"""A tiny randomly initialised VEnhancer with the real layout (offline, for tests and e2e runs)."""

from __future__ import annotations

from pathlib import Path

import torch

from cogvx.venhancer.controlnet import VEnhancerUNet, VideoControlNet
from cogvx.venhancer.pipeline import VEnhancer
from cogvx.venhancer.unet import build_unet

TEXT_DIM = 32
TINY_UNET_CONFIG: dict = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
    "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
    "block_out_channels": [32, 32, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": TEXT_DIM,
    "attention_head_dim": 8,
}


def _byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode alphabet (printable bytes first, so '!' is id 0)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in keep]
    return [chr(c) for c in keep] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer():
    """A character-level CLIP tokenizer (no merges) padding with '!' = 0, as SD-2's does."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=77)


def tiny_text_encoder(vocab_size: int, layers: int = 2, seed: int = 0, hidden: int = TEXT_DIM):
    """A small CLIPTextModel (causal, GELU) standing in for OpenCLIP ViT-H-14's text tower."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=hidden,
        pad_token_id=0,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0):
    """An AutoencoderKLTemporalDecoder with 4 levels (8x down, as the real one) and 32 channels."""
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(seed)
    return AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
    ).eval()


def tiny_venhancer(seed: int = 0) -> VEnhancer:
    """The whole tiny VEnhancer on CPU in float32."""
    torch.manual_seed(seed)
    unet = build_unet(TINY_UNET_CONFIG)
    controlnet = VideoControlNet.from_unet_config(TINY_UNET_CONFIG)
    tok = tiny_tokenizer()
    return VEnhancer(
        VEnhancerUNet(unet, controlnet), tiny_vae(seed), tok, tiny_text_encoder(len(tok), seed=seed)
    )


def save_tiny_venhancer(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny VEnhancer folder that `VEnhancer.from_folder` loads (about 3 MB)."""
    tiny_venhancer(seed).save_folder(path)
    return Path(path)
