"""The released CogVideoX configs as data, and their real sizes counted on the meta device.

Source: diffusers' `scripts/convert_cogvideox_to_diffusers.py`, which wrote the released folders
(THUDM/CogVideoX-2b, -5b, -5b-I2V, 1.5-5B, 1.5-5B-I2V): the transformer is built from the class
defaults plus the version's kwargs (1.0: sample 60x90 latents, 49 frames; 1.5: patch_size_t 2,
no patch bias, sample 300x300, 81 frames) and per model 30/42 layers, 30/48 heads, RoPE (all
but 2b), 32 input channels + learned positions (5b-I2V) or + `ofs_embed_dim=512` (1.5-I2V); the
VAE from the class defaults with `scaling_factor` 1.15258426 (2b) / 0.7, and
`invert_scale_latents` for 1.5; the tokenizer reads 226 tokens; the scheduler config is
`cogvx.models.scheduler_config`. The tiny test models (`cogvx.dev.tiny`) start from these dicts
and shrink only their sizes.

`python -m cogvx.cogvideox.released` builds each transformer, the T5 encoder and the VAE at full
size on the meta device (no memory, no weights) and prints their parameters, GFLOP per
transformer call at the native size and frame count, bf16 weight size and the memory policy's
need per offload mode (`cogvx.models.MemoryNeed`, whose weight sizes are these counts).
"""

from __future__ import annotations

import sys
from typing import Any

from cogvx.cogvideox.cost import latent_frames
from cogvx.models import get_variant

TOKENIZER_MAX_LENGTH = 226
TEXT_ENCODER = "google/t5-v1_1-xxl"
TEXT_ENCODER_CONFIG: dict[
    str, Any
] = {  # its config.json, as every release's text_encoder/ ships it
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}
TEXT_ENCODER_SIZE_FIELDS = frozenset(
    {"d_ff", "d_kv", "d_model", "num_heads", "num_layers", "vocab_size"}
)

TRANSFORMER_BASE: dict[str, Any] = {  # CogVideoXTransformer3DModel's config for 1.0 at 2b size
    "num_attention_heads": 30,
    "attention_head_dim": 64,
    "in_channels": 16,
    "out_channels": 16,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embed_dim": 512,
    "ofs_embed_dim": None,
    "text_embed_dim": 4096,
    "num_layers": 30,
    "dropout": 0.0,
    "attention_bias": True,
    "sample_width": 90,
    "sample_height": 60,
    "sample_frames": 49,
    "patch_size": 2,
    "patch_size_t": None,
    "temporal_compression_ratio": 4,
    "max_text_seq_length": 226,
    "activation_fn": "gelu-approximate",
    "timestep_activation_fn": "silu",
    "norm_elementwise_affine": True,
    "norm_eps": 1e-05,
    "spatial_interpolation_scale": 1.875,
    "temporal_interpolation_scale": 1.0,
    "use_rotary_positional_embeddings": False,
    "use_learned_positional_embeddings": False,
    "patch_bias": True,
}
VERSION_1_5 = {
    "patch_size_t": 2,
    "patch_bias": False,
    "sample_height": 300,
    "sample_width": 300,
    "sample_frames": 81,
}
FIVE_B = {"num_layers": 42, "num_attention_heads": 48, "use_rotary_positional_embeddings": True}
TRANSFORMER: dict[str, dict[str, Any]] = {
    "t2v-2b": {},
    "t2v-5b": FIVE_B,
    "i2v-5b": {**FIVE_B, "in_channels": 32, "use_learned_positional_embeddings": True},
    "t2v-1.5": {**FIVE_B, **VERSION_1_5},
    "i2v-1.5": {**FIVE_B, **VERSION_1_5, "in_channels": 32, "ofs_embed_dim": 512},
}
VAE_BASE: dict[str, Any] = {  # AutoencoderKLCogVideoX's config (2b scaling factor)
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["CogVideoXDownBlock3D"] * 4,
    "up_block_types": ["CogVideoXUpBlock3D"] * 4,
    "block_out_channels": [128, 256, 256, 512],
    "latent_channels": 16,
    "layers_per_block": 3,
    "act_fn": "silu",
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "temporal_compression_ratio": 4,
    "sample_height": 480,
    "sample_width": 720,
    "scaling_factor": 1.15258426,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "invert_scale_latents": False,
}
VAE: dict[str, dict[str, Any]] = {
    "t2v-2b": {},
    "t2v-5b": {"scaling_factor": 0.7},
    "i2v-5b": {"scaling_factor": 0.7},
    "t2v-1.5": {"scaling_factor": 0.7, "invert_scale_latents": True},
    "i2v-1.5": {"scaling_factor": 0.7, "invert_scale_latents": True},
}
# The sizes a tiny model may change; every other field stays as released.
SIZE_FIELDS = frozenset(
    {"num_attention_heads", "attention_head_dim", "time_embed_dim", "ofs_embed_dim",
     "text_embed_dim", "num_layers", "sample_width", "sample_height", "block_out_channels",
     "layers_per_block", "norm_num_groups"}
)  # fmt: skip
# Transformer parameters the model names state ("2B", "5B": rounded), checked within 20 %.
PUBLISHED_PARAMS = {"t2v-2b": 2e9, "t2v-5b": 5e9, "i2v-5b": 5e9, "t2v-1.5": 5e9, "i2v-1.5": 5e9}


def transformer_config(model: str) -> dict[str, Any]:
    """The released transformer config of `model` (a variant name)."""
    return {**TRANSFORMER_BASE, **TRANSFORMER[model]}


def vae_config(model: str) -> dict[str, Any]:
    """The released VAE config of `model`."""
    return {**VAE_BASE, **VAE[model]}


def text_encoder_config() -> dict[str, Any]:
    """The released T5 encoder config (the same for every model)."""
    return dict(TEXT_ENCODER_CONFIG)


def meta_transformer(model: str) -> Any:
    """The full-size transformer on the meta device: shapes without memory or weights."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        return CogVideoXTransformer3DModel(**transformer_config(model))


def meta_text_encoder() -> Any:
    """The full-size T5-XXL encoder on the meta device."""
    import torch
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        return T5EncoderModel(T5Config(**TEXT_ENCODER_CONFIG))


def meta_vae(model: str) -> Any:
    """The full-size VAE on the meta device."""
    import torch
    from diffusers import AutoencoderKLCogVideoX

    with torch.device("meta"):
        return AutoencoderKLCogVideoX(**vae_config(model))


def parameter_count(module: Any) -> int:
    """Parameters of a module (meta tensors count too)."""
    return sum(p.numel() for p in module.parameters())


def step_flops(model: str, module: Any | None = None) -> int:
    """FLOPs of one transformer call (batch 1: CFG doubles it) at the native size and frames."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    v = get_variant(model)
    cfg = transformer_config(model)
    module = module if module is not None else meta_transformer(model)
    frames = latent_frames(v.default_frames, cfg)  # padded to whole temporal patches, as diffusers
    meta = torch.device("meta")
    x = torch.empty(1, frames, cfg["in_channels"], v.height // 8, v.width // 8, device=meta)
    text = torch.empty(1, cfg["max_text_seq_length"], cfg["text_embed_dim"], device=meta)
    t = torch.zeros(1, dtype=torch.long, device=meta)
    kwargs: dict[str, Any] = {}
    if cfg["use_rotary_positional_embeddings"]:
        kwargs["image_rotary_emb"] = _rope_shapes(cfg, frames, v.height // 8, v.width // 8)
    if cfg["ofs_embed_dim"]:
        kwargs["ofs"] = torch.zeros(1, device=meta)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(hidden_states=x, encoder_hidden_states=text, timestep=t, **kwargs)
    return int(counter.get_total_flops())


def _rope_shapes(cfg: dict, frames: int, h: int, w: int) -> tuple[Any, Any]:
    """Meta cos/sin tables of the shape the pipeline passes (their values cost no FLOPs here)."""
    import torch

    p, pt = cfg["patch_size"], cfg["patch_size_t"] or 1
    tokens = (frames // pt) * (h // p) * (w // p)
    shape = (tokens, cfg["attention_head_dim"])
    meta = torch.device("meta")
    return torch.empty(shape, device=meta), torch.empty(shape, device=meta)


def size_table(models: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: parameter counts, GFLOP per transformer call, bf16 weights in GB."""
    text_encoder = parameter_count(meta_text_encoder())
    rows = []
    for model in models or list(TRANSFORMER):
        module = meta_transformer(model)
        params = parameter_count(module)
        vae = parameter_count(meta_vae(model))
        rows.append({
            "model": model,
            "params": params,
            "text_encoder_params": text_encoder,
            "vae_params": vae,
            "gflop_per_call": step_flops(model, module) / 1e9,
            "weights_gb_bf16": params * 2 / 1e9,
        })  # fmt: skip
    return rows


def main() -> int:
    """Print the size table (markdown), with the memory policy's need per offload mode."""
    print(
        "| model | transformer params | GFLOP per transformer call | transformer GB (bf16) "
        "| T5 + VAE params | GiB needed: none / model / sequential offload |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in size_table(sys.argv[1:] or None):
        need = get_variant(r["model"]).memory
        print(
            f"| {r['model']} | {r['params'] / 1e9:.2f} B | {r['gflop_per_call']:,.0f} | "
            f"{r['weights_gb_bf16']:.1f} | {r['text_encoder_params'] / 1e9:.2f} B + "
            f"{r['vae_params'] / 1e9:.2f} B | {need.no_offload:.1f} / {need.model_offload:.1f} / "
            f"{need.sequential_offload:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
