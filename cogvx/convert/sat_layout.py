"""Which CogVideoX model a SAT checkpoint is: families, and the transformer layout from shapes."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cogvx.lora.sat_format import SAT_PREFIX, SatConversionError
from cogvx.models import VARIANTS, Variant

Log = Callable[[str], None]


@dataclass(frozen=True)
class SatFamily:
    """Per-model constants that the weights cannot tell (published diffusers configs)."""

    name: str
    aliases: tuple[str, ...]
    generation: str  # "1.0" | "1.5"
    i2v: bool
    positional: str  # "sincos" | "rope" | "rope+learned"
    sample: tuple[int, int, int]  # sample_height, sample_width (latent px), sample_frames
    published: dict[tuple[int, int, int], str] = field(default_factory=dict)

    @property
    def variant(self) -> Variant:
        """The served model's row in the variants table (scheduler, VAE scale, pipeline)."""
        return VARIANTS[self.name]

    @property
    def pipeline(self) -> str:
        """diffusers pipeline class name."""
        return self.variant.pipeline

    @property
    def scheduler(self) -> str:
        return self.variant.scheduler

    @property
    def snr_shift_scale(self) -> float:
        return self.variant.snr_shift_scale

    @property
    def vae_scaling_factor(self) -> float:
        return self.variant.vae_scaling_factor


FAMILIES: dict[str, SatFamily] = {
    f.name: f
    for f in [
        SatFamily("t2v-2b", ("2b",), "1.0", False, "sincos", (60, 90, 49),
                  {(30, 1920, 30): "THUDM/CogVideoX-2b"}),
        SatFamily("t2v-5b", ("5b",), "1.0", False, "rope", (60, 90, 49),
                  {(42, 3072, 48): "THUDM/CogVideoX-5b"}),
        SatFamily("i2v-5b", ("5b-i2v",), "1.0", True, "rope+learned", (60, 90, 49),
                  {(42, 3072, 48): "THUDM/CogVideoX-5b-I2V"}),
        SatFamily("t2v-1.5", ("1.5",), "1.5", False, "rope", (300, 300, 81),
                  {(42, 3072, 48): "THUDM/CogVideoX1.5-5B"}),
        SatFamily("i2v-1.5", ("1.5-i2v",), "1.5", True, "rope", (300, 300, 81),
                  {(42, 3072, 48): "THUDM/CogVideoX1.5-5B-I2V"}),
    ]
}  # fmt: skip


def get_family(name: str) -> SatFamily:
    """Family by name or alias (`5b`, `t2v-5b`, `1.5-i2v`, ...); ValueError lists the choices."""
    for f in FAMILIES.values():
        if name.lower() in (f.name, *f.aliases):
            return f
    choices = sorted(
        [f.name for f in FAMILIES.values()] + [a for f in FAMILIES.values() for a in f.aliases]
    )
    raise ValueError(f"variant {name!r} is unknown; allowed: {choices}")


@dataclass
class TransformerLayout:
    """What a SAT transformer checkpoint is: its family, diffusers config and how it was found."""

    family: SatFamily
    config: dict
    notes: list[str]

    def describe(self) -> str:
        """One line for the user: family, sizes and the published model it matches."""
        c = self.config
        key = (
            c["num_layers"],
            c["num_attention_heads"] * c["attention_head_dim"],
            c["num_attention_heads"],
        )
        match = self.family.published.get(key)
        return (
            f"{self.family.name}: {c['num_layers']} layers, hidden {key[1]}, "
            f"{c['num_attention_heads']} heads x {c['attention_head_dim']}, "
            f"in/out channels {c['in_channels']}/{c['out_channels']}, "
            f"text dim {c['text_embed_dim']}" + (f" (= {match})" if match else "")
        )


def _need(sd: dict[str, torch.Tensor], key: str, path: str | Path) -> torch.Tensor:
    if key not in sd:
        raise SatConversionError(
            f"{path}: unknown SAT layout, key {SAT_PREFIX}{key} is missing "
            f"(first keys: {list(sd)[:8]})"
        )
    return sd[key]


def _first_change(block: torch.Tensor) -> int:
    """Index of the first row that differs from row 0 (len if none)."""
    diff = (block - block[:1]).abs().amax(dim=-1) > 1e-6
    idx = torch.nonzero(diff)
    return int(idx[0]) if len(idx) else len(block)


def _grid_from_columns(table: torch.Tensor, slow: slice, mid: slice) -> tuple[int, int, int]:
    """(frames, height, width) of a (t h w)-ordered table whose `slow`/`mid` columns encode t/h."""
    n = len(table)
    hw = _first_change(table[:, slow])
    w = _first_change(table[:, mid])
    if hw == 0 or w == 0 or n % hw or hw % w:
        raise SatConversionError(f"cannot read a (t, h, w) grid from a table of {n} rows")
    return n // hw, hw // w, w


def rope_grid(freqs: torch.Tensor, head_dim: int) -> tuple[int, int, int]:
    """Latent grid (T, h, w) after patching, read from SAT's stored RoPE table."""
    if freqs.ndim == 4:
        return tuple(freqs.shape[:3])  # type: ignore[return-value]
    dt, dh = head_dim // 4, head_dim // 8 * 3
    return _grid_from_columns(freqs.float(), slice(0, dt), slice(dt, dt + dh))


def sincos_grid(table: torch.Tensor) -> tuple[int, int, int, int]:
    """(text_len, T, h, w) of SAT's 2b sincos table [1, text + T*h*w, H] (text rows are zero)."""
    t = table[0].float()
    nonzero = torch.nonzero(t.abs().amax(dim=-1) > 0)
    text = int(nonzero[0]) if len(nonzero) else 0
    dim = t.shape[1]
    # columns: temporal (dim/4) | spatial-from-w (3dim/8) | spatial-from-h (3dim/8)
    frames, h, w = _grid_from_columns(
        t[text:], slice(0, dim // 4), slice(dim // 4 + dim // 8 * 3, dim)
    )
    return text, frames, h, w


def sincos_scales(rows: torch.Tensor, grid: list[int]) -> tuple[float, float, float]:
    """(height, width, time) interpolation scales of a SAT sincos table (patch rows only).

    Each 1D part is [sin(pos * w_k) | cos(pos * w_k)] with w_0 = 1 and pos = index / scale, so
    the scale is 1 / atan2(sin, cos) at index 1. Defaults (1.875, 1.875, 1.0) where a size is 1.
    """
    frames, h, w = grid
    dim = rows.shape[-1]
    dt, ds = dim // 4, dim // 8 * 3
    t = rows.float()

    def scale(row: int, col: int, half: int, default: float) -> float:
        x = torch.atan2(t[row, col], t[row, col + half]).item()
        return round(1.0 / x, 4) if x > 0 else default

    return (
        scale(w, dt + ds, ds // 2, 1.875) if h > 1 else 1.875,
        scale(1, dt, ds // 2, 1.875) if w > 1 else 1.875,
        scale(h * w, 0, dt // 2, 1.0) if frames > 1 else 1.0,
    )


def _check_sincos(table: torch.Tensor, grid: list[int], spatial: float, temporal: float) -> str:
    """Compare SAT's stored sincos table with the one diffusers recomputes (it is dropped)."""
    from diffusers.models.embeddings import get_3d_sincos_pos_embed

    frames, h, w = grid
    ours = get_3d_sincos_pos_embed(
        table.shape[-1], (w, h), frames, spatial, temporal, output_type="pt"
    )
    diff = (table.float() - ours.flatten(0, 1).float()).abs().max().item()
    tol = 1e-4 if table.dtype == torch.float32 else torch.finfo(table.dtype).eps
    if diff > tol:
        return (
            f"WARNING: the stored sincos table differs from diffusers' recomputation by "
            f"{diff:.2e}; diffusers uses its own table, so outputs may differ from SAT"
        )
    return f"stored sincos table = diffusers' recomputation (max diff {diff:.1e}); dropped"


def detect_transformer(
    sd: dict[str, torch.Tensor],
    path: str | Path = "checkpoint",
    variant: str | None = None,
    sample_size: tuple[int, int] | None = None,
    sample_frames: int | None = None,
    max_text_seq_length: int | None = None,
) -> TransformerLayout:
    """Detect family and diffusers config from keys and shapes (prefix already stripped).

    `variant` must name the detected family (else SatConversionError naming both): the weights
    fix the position scheme. `sample_size` (latent h, w), `sample_frames` and
    `max_text_seq_length` override what the stored position tables or the published config say.
    """
    notes: list[str] = []
    interpolation: dict[str, float] = {}
    layers = sorted(
        {int(m.group(1)) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    )
    if not layers:
        _need(sd, "transformer.layers.0.attention.query_key_value.weight", path)
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise SatConversionError(f"{path}: transformer layers {missing} are missing")
    hidden = _need(sd, "transformer.final_layernorm.weight", path).shape[0]
    head_dim = _need(sd, "mixins.adaln_layer.query_layernorm_list.0.weight", path).shape[0]
    if hidden % head_dim:
        raise SatConversionError(
            f"{path}: hidden size {hidden} is not a multiple of head dim {head_dim}"
        )
    time_w = _need(sd, "time_embed.0.weight", path)
    if time_w.shape[1] != hidden:
        raise SatConversionError(
            f"{path}: time_embed.0 takes {time_w.shape[1]} inputs, "
            f"expected the hidden size {hidden}"
        )
    text_dim = _need(sd, "mixins.patch_embed.text_proj.weight", path).shape[1]
    proj = _need(sd, "mixins.patch_embed.proj.weight", path)
    out_features = _need(sd, "mixins.final_layer.linear.weight", path).shape[0]
    if proj.ndim == 4:  # Conv2d patch embed: CogVideoX 1.0
        generation, p, pt = "1.0", proj.shape[2], None
        in_ch, out_ch = proj.shape[1], out_features // (p * p)
    elif proj.ndim == 2:  # Linear over (c, t, h, w) patches: CogVideoX 1.5, patch 2x2x2
        generation, p, pt = "1.5", 2, 2
        in_ch, out_ch = proj.shape[1] // 8, out_features // 8
    else:
        raise SatConversionError(
            f"{path}: patch_embed.proj has unexpected shape {tuple(proj.shape)}"
        )
    if in_ch not in (out_ch, 2 * out_ch):
        raise SatConversionError(
            f"{path}: unknown layout: {in_ch} input channels for {out_ch} output channels "
            "(expected equal for text-to-video or double for image-to-video)"
        )
    i2v = in_ch == 2 * out_ch
    has_pos = "mixins.pos_embed.pos_embedding" in sd
    if generation == "1.0":
        name = ("i2v-5b" if i2v else "t2v-5b") if (i2v or not has_pos) else "t2v-2b"
    else:
        name = "i2v-1.5" if i2v else "t2v-1.5"
    family = FAMILIES[name]
    notes.append(
        f"detected {name} from keys/shapes: patch embed {'Conv2d' if pt is None else 'Linear'} "
        f"{tuple(proj.shape)}, {in_ch} in / {out_ch} out channels, "
        f"pos_embedding {'present' if has_pos else 'absent'}, "
        f"ofs_embed {'present' if 'ofs_embed.0.weight' in sd else 'absent'}"
    )
    if variant is not None:
        # Generation, I2V and the position scheme are all read from the weights, and together they
        # name exactly one family: a different --variant would convert with the wrong positions.
        chosen = get_family(variant)
        if chosen.name != name:
            raise SatConversionError(
                f"{path}: --variant {chosen.name} (CogVideoX {chosen.generation} "
                f"{'image' if chosen.i2v else 'text'}-to-video, {chosen.positional} positions) "
                f"does not fit the weights, detected as {name}: CogVideoX {generation} "
                f"{'image' if i2v else 'text'}-to-video, {family.positional} positions "
                f"({in_ch} input channels, {'Linear' if pt else 'Conv2d'} patch embed, "
                f"pos_embedding {'present' if has_pos else 'absent'}); drop --variant or pass "
                f"{name}"
            )

    rope = family.positional != "sincos"
    learned = family.positional == "rope+learned" and has_pos
    sh, sw, sf = family.sample
    text_len = 226
    grid: Sequence[int] | None = None
    if "mixins.pos_embed.freqs_sin" in sd and rope:
        grid = rope_grid(sd["mixins.pos_embed.freqs_sin"], head_dim)
        notes.append(f"RoPE table in checkpoint: latent grid {grid} (frames, h, w) after patching")
    if has_pos and family.positional == "sincos":
        table = sd["mixins.pos_embed.pos_embedding"]
        text_len, *grid = sincos_grid(table)
        scale_h, scale_w, scale_t = sincos_scales(table[0, text_len:], grid)
        notes.append(
            f"sincos table in checkpoint: {text_len} text tokens, grid {tuple(grid)}, "
            f"interpolation h {scale_h:g} w {scale_w:g} t {scale_t:g}"
        )
        if scale_h != scale_w:
            notes.append("WARNING: diffusers has one spatial interpolation scale; using width's")
        interpolation = dict(
            spatial_interpolation_scale=scale_w, temporal_interpolation_scale=scale_t
        )
        notes.append(_check_sincos(table[0, text_len:], grid, scale_w, scale_t))
    if grid is not None and pt is None:
        sh, sw, sf = grid[1] * p, grid[2] * p, (grid[0] - 1) * 4 + 1
    if learned:
        rows = sd["mixins.pos_embed.pos_embedding"].shape[1]
        if grid is not None:
            text_len = rows - grid[0] * grid[1] * grid[2]
    if sample_size is not None:
        sh, sw = sample_size
    if sample_frames is not None:
        sf = sample_frames
    if max_text_seq_length is not None:
        text_len = max_text_seq_length
    if grid is not None and pt is None:
        want = (grid[1] * p, grid[2] * p, (grid[0] - 1) * 4 + 1)
        if (sh, sw, sf) != want:
            raise SatConversionError(
                f"{path}: sample size {sh}x{sw}, {sf} frames conflicts with the position table "
                f"stored in the checkpoint ({want[0]}x{want[1]}, {want[2]} frames)"
            )
    if learned:
        rows = sd["mixins.pos_embed.pos_embedding"].shape[1]
        patches = (sh // p) * (sw // p) * ((sf - 1) // 4 + 1)
        if rows != text_len + patches:
            raise SatConversionError(
                f"{path}: the learned pos_embedding has {rows} rows but {text_len} text tokens + "
                f"{patches} patches ({sh}x{sw} latent, {sf} frames) = {text_len + patches}; pass "
                "--sample-size HxW (latent), --sample-frames and --max-text-seq-length to match "
                "the training config"
            )
    config: dict[str, Any] = dict(
        num_attention_heads=hidden // head_dim,
        attention_head_dim=head_dim,
        in_channels=in_ch,
        out_channels=out_ch,
        time_embed_dim=time_w.shape[0],
        text_embed_dim=text_dim,
        num_layers=len(layers),
        sample_height=sh,
        sample_width=sw,
        sample_frames=sf,
        patch_size=p,
        patch_size_t=pt,
        patch_bias="mixins.patch_embed.proj.bias" in sd if pt is None else False,
        max_text_seq_length=text_len,
        use_rotary_positional_embeddings=rope,
        use_learned_positional_embeddings=learned,
    )
    config.update(interpolation)
    if "ofs_embed.0.weight" in sd:
        config["ofs_embed_dim"] = sd["ofs_embed.0.weight"].shape[1]
    notes.append(f"sample size {sh}x{sw} latent, {sf} frames, {text_len} text tokens")
    return TransformerLayout(family, config, notes)
