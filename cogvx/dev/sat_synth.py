"""Tiny synthetic SAT checkpoints of every layout (tests and demos; no downloads)."""

from __future__ import annotations

import torch

from cogvx.convert.sat_keys import transformer_to_sat
from cogvx.convert.sat_layout import SatFamily
from cogvx.convert.sat_vae import vae_to_sat
from cogvx.lora.sat_format import SAT_PREFIX


def tiny_transformer(
    family: SatFamily,
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    channels: int = 4,
    text_dim: int = 32,
    sample: tuple[int, int, int] = (8, 8, 13),
    text_len: int = 16,
    seed: int = 0,
):
    """A randomly initialised diffusers transformer with `family`'s layout, in eval mode."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    kwargs = dict(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=2 * channels if family.i2v else channels,
        out_channels=channels,
        time_embed_dim=16,
        text_embed_dim=text_dim,
        num_layers=num_layers,
        sample_height=sample[0],
        sample_width=sample[1],
        sample_frames=sample[2],
        max_text_seq_length=text_len,
        use_rotary_positional_embeddings=family.positional != "sincos",
        use_learned_positional_embeddings=family.positional == "rope+learned",
    )
    if family.generation == "1.5":
        kwargs.update(patch_size_t=2, patch_bias=False)
        if family.i2v:
            kwargs.update(ofs_embed_dim=16)
    model = CogVideoXTransformer3DModel(**kwargs).eval()
    with torch.no_grad():  # non-zero biases/norms so every tensor matters in comparisons
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        if family.positional == "rope+learned":  # diffusers builds it in float64
            table = torch.randn_like(model.patch_embed.pos_embedding, dtype=torch.float32) * 0.02
            model.patch_embed.register_buffer("pos_embedding", table, persistent=True)
    return model


def sat_transformer_state(
    model, family: SatFamily, store_freqs: bool = True
) -> dict[str, torch.Tensor]:
    """`model`'s weights as SAT saves them (prefixed keys), with the tables SAT also stores."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    c = model.config
    hidden = c.num_attention_heads * c.attention_head_dim
    extras = {"transformer.position_embeddings.weight": torch.randn(64, hidden)}
    if family.positional == "sincos":
        extras["mixins.pos_embed.pos_embedding"] = model.patch_embed.pos_embedding.clone()
    elif family.generation == "1.0" and store_freqs:
        h, w = c.sample_height // c.patch_size, c.sample_width // c.patch_size
        t = (c.sample_frames - 1) // 4 + 1
        cos, sin = get_3d_rotary_pos_embed(c.attention_head_dim, ((0, 0), (h, w)), (h, w), t)
        extras.update({"mixins.pos_embed.freqs_cos": cos, "mixins.pos_embed.freqs_sin": sin})
    return transformer_to_sat(model.state_dict(), family, extras)


def sat_lora_state(
    num_layers: int, hidden: int, rank: int, seed: int = 0, std: float = 0.2
) -> dict[str, torch.Tensor]:
    """Random SAT LoRA matrices (prefixed) for every layer's query_key_value and dense."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in range(num_layers):
        for mod, parts in (("query_key_value", 3), ("dense", 1)):
            base = f"{SAT_PREFIX}transformer.layers.{n}.attention.{mod}"
            for i in range(parts):
                out[f"{base}.matrix_A.{i}"] = torch.randn(rank, hidden, generator=g) * std
                out[f"{base}.matrix_B.{i}"] = torch.randn(hidden, rank, generator=g) * std
    return out


def tiny_vae(latent_channels: int = 4, seed: int = 0):
    """A tiny diffusers CogVideoX VAE (4 blocks of 8-16 channels, 4 GroupNorm groups)."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=latent_channels,
    ).eval()


def sat_vae_state(vae) -> dict[str, torch.Tensor]:
    """`vae`'s weights as SAT's 3d-vae.pt holds them (inside {"state_dict": ...})."""
    return vae_to_sat(vae.state_dict())
