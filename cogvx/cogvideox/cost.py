"""What a CogVideoX generation costs: transformer calls and FLOPs, from the transformer's config.

`call_flops` counts the matrix products of one `CogVideoXTransformer3DModel` call the way
`torch.utils.flop_counter.FlopCounterMode` does (2 per multiply-add; attention 4 x tokens^2 x
width), so it is exact, and tests hold it to the counter on the tiny models and on the full-size
ones at their native shapes (meta device). Unlike the counter it costs nothing, so every request
logs its cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def latent_frames(num_frames: int, config: Mapping[str, Any]) -> int:
    """Latent frames the transformer sees: VAE compression, then padding to whole time patches."""
    frames = (num_frames - 1) // config["temporal_compression_ratio"] + 1
    patch_t = config.get("patch_size_t") or 1
    return frames + (-frames % patch_t)


def video_tokens(frames: int, height: int, width: int, config: Mapping[str, Any]) -> int:
    """Tokens of a latent video of `frames` x `height` x `width` (latent units) once patched."""
    p, pt = config["patch_size"], config.get("patch_size_t") or 1
    return (frames // pt) * (height // p) * (width // p)


def call_flops(
    config: Mapping[str, Any],
    frames: int,
    height: int,
    width: int,
    text_tokens: int | None = None,
    batch: int = 1,
) -> int:
    """FLOPs of one transformer call on latents of `frames` x `height` x `width`."""
    d = config["num_attention_heads"] * config["attention_head_dim"]
    e = config["time_embed_dim"]
    c_in, c_out = config["in_channels"], config["out_channels"]
    p, pt = config["patch_size"], config.get("patch_size_t") or 1
    nt = config["max_text_seq_length"] if text_tokens is None else text_tokens
    nv = video_tokens(frames, height, width, config)
    n = nt + nv
    macs = nv * c_in * p * p * pt * d  # patch embedding (convolution for 1.0, linear for 1.5)
    macs += nt * config["text_embed_dim"] * d  # text projection
    macs += d * e + e * e  # timestep embedding (two linears on the sinusoid)
    per_layer = 2 * e * 6 * d  # two adaptive norms: 6 modulation vectors each
    per_layer += n * 4 * d * d  # q, k, v and output projections over text + video
    per_layer += n * 8 * d * d  # feed-forward, 4x wide
    per_layer += 2 * n * n * d  # attention: QK^T and AV, joint over text + video
    macs += config["num_layers"] * per_layer
    macs += e * 2 * d  # output norm's modulation
    macs += nv * d * p * p * pt * c_out  # un-patching projection
    macs *= batch
    if config.get("ofs_embed_dim"):  # 1.5-I2V: the pipeline passes one ofs value for the batch
        o = config["ofs_embed_dim"]
        macs += 2 * o * o
    return 2 * macs


@dataclass(frozen=True)
class GenerationCost:
    """The transformer work of one generation."""

    calls: int  # transformer evaluations (one per denoising step)
    batch: int  # 2 with classifier-free guidance (conditional + unconditional in one call)
    flops_per_call: int  # at that batch

    @property
    def flops(self) -> int:
        """All transformer FLOPs of the run."""
        return self.calls * self.flops_per_call

    def describe(self) -> str:
        """The cost line of the generation log."""
        return (
            f"cost: {self.calls} transformer calls x batch {self.batch}, "
            f"{format_flops(self.flops_per_call)} each, {format_flops(self.flops)} in all"
        )


def generation_cost(
    config: Mapping[str, Any],
    num_frames: int,
    height: int,
    width: int,
    steps: int,
    guidance_scale: float,
    spatial_factor: int = 8,
    text_tokens: int | None = None,
) -> GenerationCost:
    """Cost of denoising `num_frames` at `height` x `width` pixels for `steps` transformer calls.

    `spatial_factor` is the VAE's downsampling (the pipeline's `vae_scale_factor_spatial`);
    guidance above 1 batches the unconditional pass with the conditional one, as diffusers does.
    """
    batch = 2 if guidance_scale > 1 else 1
    frames = latent_frames(num_frames, config)
    h, w = height // spatial_factor, width // spatial_factor
    return GenerationCost(steps, batch, call_flops(config, frames, h, w, text_tokens, batch))


def format_flops(flops: float) -> str:
    """1.2 PFLOP, 332 TFLOP, 4.1 MFLOP: three significant digits at most."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if flops >= scale:
            value = flops / scale
            return f"{value:.3g} {unit}FLOP" if value < 1000 else f"{value:.0f} {unit}FLOP"
    return f"{flops:.0f} FLOP"
