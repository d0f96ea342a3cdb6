"""SAT (SwissArmyTransformer) CogVideoX checkpoints: loading, layout detection, transformer key map.

The tools `convert_weight_sat2hf.py` and `export_sat_lora_weight.py` are thin CLIs over this module,
`cogvx.convert.sat_vae`, `cogvx.convert.sat_lora` and `cogvx.convert.sat_pipeline`.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cogvx.models import VARIANTS, Variant
from cogvx.sat_lora_format import SAT_PREFIX, SatConversionError, lora_deltas

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Log = Callable[[str], None]


# ----------------------------------------------------------------------------- loading


def resolve_checkpoint(path: str | Path) -> Path:
    """The .pt file for `path`: a file, or a SAT save folder (`latest` + `<iter>/mp_rank_00_*`)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        latest = p / "latest"
        candidates = [p / "mp_rank_00_model_states.pt"]
        if latest.is_file():
            candidates.insert(0, p / latest.read_text().strip() / "mp_rank_00_model_states.pt")
        for c in candidates:
            if c.is_file():
                return c
        raise SatConversionError(
            f"{p} is a folder without a SAT checkpoint: expected a 'latest' file naming an "
            "iteration folder, or mp_rank_00_model_states.pt inside it"
        )
    raise SatConversionError(f"{p}: no such file")


def load_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Load a SAT/PyTorch checkpoint memory-mapped and return its flat tensor dict.

    Unwraps `{"module": ...}`, `{"model": ...}` and `{"state_dict": ...}` like SAT and DeepSpeed
    write them. `trust_pickle` allows arbitrary pickled objects (only for files you trust).
    """
    p = resolve_checkpoint(path)
    size = p.stat().st_size
    with open(p, "rb") as f:
        magic = f.read(4)
    zipped = magic == b"PK\x03\x04"
    if not zipped and magic[:1] != b"\x80":
        raise SatConversionError(
            f"{p} is not a PyTorch checkpoint (starts with {magic!r}); SAT saves torch .pt files "
            "such as mp_rank_00_model_states.pt"
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=not trust_pickle, mmap=zipped)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1][:300]
        raise SatConversionError(
            f"{p} holds pickled Python objects that safe loading refuses ({first}). If you trust "
            "the file, pass --trust-pickle"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise SatConversionError(
            f"{p} ({size} bytes) cannot be read: the file is truncated or corrupt ({e})"
        ) from e
    for key in ("module", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise SatConversionError(f"{p} holds no state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SatConversionError(f"{p}: entries that are not tensors: {bad[:10]}")
    return obj


def split_sat_model(
    sd: dict[str, torch.Tensor], path: str | Path
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """Split a SAT model state dict into (transformer keys without prefix, VAE keys, skipped).

    `first_stage_model.*` is the VAE; `conditioner.*` (T5) is skipped (the text encoder comes from
    a diffusers folder). Any other top-level name is an error naming the first such keys.
    """
    dit, vae, skipped, unknown = {}, {}, [], []
    for k, v in sd.items():
        if k.startswith(SAT_PREFIX):
            dit[k[len(SAT_PREFIX) :]] = v
        elif k.startswith("first_stage_model."):
            vae[k[len("first_stage_model.") :]] = v
        elif k.startswith("conditioner."):
            skipped.append(k)
        else:
            unknown.append(k)
    if not dit:
        hint = ""
        if any(k.startswith(("encoder.", "decoder.")) for k in sd):
            hint = " It looks like a SAT VAE checkpoint: pass it with --vae."
        raise SatConversionError(
            f"{path} is not a SAT CogVideoX transformer checkpoint: no key starts with "
            f"'{SAT_PREFIX}' (first keys: {list(sd)[:5]}).{hint}"
        )
    if unknown:
        raise SatConversionError(
            f"{path}: unexpected keys outside {SAT_PREFIX!r}: {unknown[:10]}"
            + (f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else "")
        )
    return dit, vae, skipped


# ----------------------------------------------------------------------------- layouts


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

    `variant` overrides the detected family; `sample_size` (latent h, w), `sample_frames` and
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
        chosen = get_family(variant)
        if (chosen.generation, chosen.i2v) != (generation, i2v):
            raise SatConversionError(
                f"{path}: --variant {chosen.name} does not fit the weights, which are CogVideoX "
                f"{generation} {'image' if i2v else 'text'}-to-video ({in_ch} input channels, "
                f"{'Linear' if pt else 'Conv2d'} patch embed)"
            )
        if chosen.name != name:
            notes.append(f"--variant {chosen.name} overrides the detected {name}")
        family = chosen

    rope = family.positional != "sincos"
    learned = family.positional == "rope+learned" and has_pos
    sh, sw, sf = family.sample
    text_len = 226
    grid = None
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
    config = dict(
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


# ----------------------------------------------------------------------------- key map

# (SAT template, diffusers template(s), kind). {n} = layer, {p} = weight|bias.
# kind "qkv": one SAT tensor -> q, k, v (chunk 3 on dim 0);
# kind "adaln": SAT [12H] modulations (shift, scale, gate: msa, mlp, text msa, text mlp)
#   -> norm1 = chunks 0-2 + 6-8 and norm2 = chunks 3-5 + 9-11.
_L, _B = "transformer.layers.{n}", "transformer_blocks.{n}"
TRANSFORMER_RULES: list[tuple[str, tuple[str, ...], str]] = [
    (f"{_L}.input_layernorm.{{p}}", (f"{_B}.norm1.norm.{{p}}",), "copy"),
    (f"{_L}.attention.query_key_value.{{p}}",
     tuple(f"{_B}.attn1.to_{x}.{{p}}" for x in "qkv"), "qkv"),
    (f"{_L}.attention.dense.{{p}}", (f"{_B}.attn1.to_out.0.{{p}}",), "copy"),
    (f"{_L}.post_attention_layernorm.{{p}}", (f"{_B}.norm2.norm.{{p}}",), "copy"),
    (f"{_L}.mlp.dense_h_to_4h.{{p}}", (f"{_B}.ff.net.0.proj.{{p}}",), "copy"),
    (f"{_L}.mlp.dense_4h_to_h.{{p}}", (f"{_B}.ff.net.2.{{p}}",), "copy"),
    ("mixins.adaln_layer.adaLN_modulations.{n}.1.{p}",
     (f"{_B}.norm1.linear.{{p}}", f"{_B}.norm2.linear.{{p}}"), "adaln"),
    ("mixins.adaln_layer.query_layernorm_list.{n}.{p}", (f"{_B}.attn1.norm_q.{{p}}",), "copy"),
    ("mixins.adaln_layer.key_layernorm_list.{n}.{p}", (f"{_B}.attn1.norm_k.{{p}}",), "copy"),
    ("transformer.final_layernorm.{p}", ("norm_final.{p}",), "copy"),
    ("time_embed.0.{p}", ("time_embedding.linear_1.{p}",), "copy"),
    ("time_embed.2.{p}", ("time_embedding.linear_2.{p}",), "copy"),
    ("ofs_embed.0.{p}", ("ofs_embedding.linear_1.{p}",), "copy"),
    ("ofs_embed.2.{p}", ("ofs_embedding.linear_2.{p}",), "copy"),
    ("mixins.patch_embed.proj.{p}", ("patch_embed.proj.{p}",), "copy"),
    ("mixins.patch_embed.text_proj.{p}", ("patch_embed.text_proj.{p}",), "copy"),
    ("mixins.final_layer.norm_final.{p}", ("norm_out.norm.{p}",), "copy"),
    ("mixins.final_layer.linear.{p}", ("proj_out.{p}",), "copy"),
    ("mixins.final_layer.adaLN_modulation.1.{p}", ("norm_out.linear.{p}",), "copy"),
    ("mixins.pos_embed.pos_embedding", ("patch_embed.pos_embedding",), "copy"),
]  # fmt: skip

# Tables SAT stores that diffusers recomputes (the 2b sincos pos_embedding is added per layout).
DROPPED = (
    "mixins.pos_embed.freqs_sin",
    "mixins.pos_embed.freqs_cos",
    "transformer.position_embeddings.weight",
)
LORA_RE = re.compile(r"(.*)\.matrix_([AB])\.(\d+)$")


def _template_re(template: str) -> re.Pattern:
    pattern = (
        re.escape(template)
        .replace(r"\{n\}", r"(?P<n>\d+)")
        .replace(r"\{p\}", r"(?P<p>weight|bias)")
    )
    return re.compile(pattern + "$")


_SAT_RES = [(_template_re(src), dst, kind) for src, dst, kind in TRANSFORMER_RULES]
_HF_RES = [(src, [_template_re(d) for d in dst], kind) for src, dst, kind in TRANSFORMER_RULES]
_DST_TEMPLATES = {src: dst for src, dst, _ in TRANSFORMER_RULES}


@dataclass
class Planned:
    """A diffusers tensor to produce: its shape (known without reading data) and how to make it."""

    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def _adaln_half(t: torch.Tensor, i: int) -> torch.Tensor:
    """norm1 (i=0: chunks 0-2, 6-8) or norm2 (i=1: chunks 3-5, 9-11) of SAT's 12 modulations."""
    c = t.chunk(12, dim=0)
    return torch.cat(c[3 * i : 3 * i + 3] + c[6 + 3 * i : 9 + 3 * i])


def _add_delta(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (w.float() + delta.float()).to(w.dtype)


def plan_transformer(
    sd: dict[str, torch.Tensor],
    layout: TransformerLayout,
    path: str | Path = "checkpoint",
    lora: str | None = None,
    lora_alpha: float = 1.0,
) -> tuple[dict[str, Planned], list[str]]:
    """Map every SAT key to diffusers tensors (lazy); returns (plan, dropped keys).

    Raises SatConversionError listing unexpected keys. `lora`: None (LoRA matrices are an error),
    "merge" (W + alpha/r * B @ A into the base weights) or "drop".
    """
    base, loras = {}, {}
    for k, v in sd.items():
        m = LORA_RE.match(k)
        if m:
            loras[k] = v
        else:
            base[k.replace(".original.", ".")] = v
    if loras and lora is None:
        raise SatConversionError(
            f"{path} holds {len(loras)} SAT LoRA matrices (e.g. {next(iter(loras))}): pass "
            "--lora merge to fold them into the weights or --lora drop to convert the base model "
            "(export the LoRA itself with tools/export_sat_lora_weight.py)"
        )
    drop = set(DROPPED)
    if layout.family.positional == "sincos":
        drop.add("mixins.pos_embed.pos_embedding")
    plan: dict[str, Planned] = {}
    dropped, unexpected = [], []
    for k, t in base.items():
        if k in drop:
            dropped.append(k)
            continue
        for rx, dst, kind in _SAT_RES:
            m = rx.match(k)
            if not m:
                continue
            names = [d.format(**m.groupdict()) for d in dst]
            if kind == "copy":
                plan[names[0]] = Planned(tuple(t.shape), lambda t=t: t)
            elif kind == "qkv":
                shape = (t.shape[0] // 3, *t.shape[1:])
                for i, name in enumerate(names):
                    plan[name] = Planned(shape, lambda t=t, i=i: t.chunk(3, dim=0)[i])
            else:  # adaln
                shape = (t.shape[0] // 2, *t.shape[1:])
                for i, name in enumerate(names):
                    plan[name] = Planned(shape, lambda t=t, i=i: _adaln_half(t, i))
            break
        else:
            unexpected.append(k)
    if unexpected:
        raise SatConversionError(
            f"{path}: unknown SAT layout, unexpected keys: "
            f"{[SAT_PREFIX + k for k in unexpected[:10]]}"
            + (f" (+{len(unexpected) - 10} more)" if len(unexpected) > 10 else "")
        )
    if loras and lora == "merge":
        for name, delta in lora_deltas(loras, lora_alpha, path).items():
            if name not in plan:
                raise SatConversionError(f"{path}: LoRA targets {name}, which the model lacks")
            old = plan[name]
            plan[name] = Planned(old.shape, lambda old=old, d=delta: _add_delta(old.make(), d()))
    elif loras:
        dropped.extend(loras)
    return plan, dropped


def transformer_to_sat(
    hf: dict[str, torch.Tensor], family: SatFamily, extras: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Inverse map: a diffusers transformer state dict in SAT layout (prefixed, for tests).

    `extras` are added as-is under the prefix (e.g. freqs tables or the 2b sincos table).
    """
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for src, dst_res, kind in _HF_RES:
        for k in hf:
            m = dst_res[0].match(k)
            if not m:
                continue
            g = m.groupdict()
            names = [d.format(**g) for d in _DST_TEMPLATES[src]]
            parts = [hf[n] for n in names]
            used.update(names)
            if kind == "adaln":
                a, b = parts[0].chunk(6), parts[1].chunk(6)
                t = torch.cat(a[0:3] + b[0:3] + a[3:6] + b[3:6])
            else:
                t = torch.cat(parts) if len(parts) > 1 else parts[0]
            out[SAT_PREFIX + src.format(**g)] = t.clone()
    left = sorted(set(hf) - used)
    if left:
        raise ValueError(f"diffusers keys without a SAT name: {left[:10]}")
    for k, v in (extras or {}).items():
        out[SAT_PREFIX + k] = v
    return out


# ----------------------------------------------------------------------------- writing


def parse_size(text: str | int) -> int:
    """Bytes from '5GB', '500MB', '2GiB' or an int."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"shard size {text!r} is not a size like '5GB' or '500MB'")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2).upper() or "_"))


def check_plan(
    plan: dict[str, Planned], expected: dict[str, tuple[int, ...]], what: str, path: str | Path
) -> None:
    """Strict load: every expected key planned with its shape, nothing extra."""
    missing = [k for k in expected if k not in plan]
    extra = [k for k in plan if k not in expected]
    shapes = [
        f"{k}: checkpoint {plan[k].shape} vs model {expected[k]}"
        for k in expected
        if k in plan and tuple(plan[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} {what} tensors: {missing[:10]}")
    if extra:
        problems.append(f"{len(extra)} unexpected: {extra[:10]}")
    if shapes:
        problems.append(f"shape mismatches: {shapes[:10]}")
    if problems:
        raise SatConversionError(f"{path}: cannot load the {what} strictly; " + "; ".join(problems))


def write_model_folder(
    out_dir: str | Path,
    model_cls: type,
    config: dict,
    plan: dict[str, Planned],
    dtype: torch.dtype,
    max_shard_size: str | int = "5GB",
    source: str | Path = "checkpoint",
    log: Log = print,
) -> Path:
    """Check `plan` strictly against `model_cls(**config)` and write config + safetensors shards.

    Tensors are made shard by shard, so peak memory is about one shard, not the whole model.
    """
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    with init_empty_weights():
        model = model_cls(**config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_plan(plan, expected, model_cls.__name__, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_config(out)
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = [[]]
    size = 0
    for k, shape in expected.items():
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    n = len(shards)
    stem = "diffusion_pytorch_model"
    weight_map, total = {}, 0
    for i, keys in enumerate(shards, 1):
        name = f"{stem}.safetensors" if n == 1 else f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        tensors = {k: plan[k].make().to(dtype).contiguous() for k in keys}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, out / name, metadata={"format": "pt"})
        del tensors
        weight_map.update(dict.fromkeys(keys, name))
        log(f"  wrote {out.name}/{name} ({len(keys)} tensors)")
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def dtype_from_flags(dtype: str | None, fp16: bool = False, bf16: bool = False) -> str | None:
    """Resolve --dtype/--fp16/--bf16; ValueError when they conflict."""
    picked = {d for d, on in (("fp16", fp16), ("bf16", bf16)) if on}
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"--dtype {dtype!r} is not allowed; choose one of {sorted(DTYPES)}")
        picked.add(dtype)
    if len(picked) > 1:
        raise ValueError(
            f"conflicting dtype flags: {sorted(picked)}; pass only one of --dtype/--fp16/--bf16"
        )
    return picked.pop() if picked else None


def source_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """The most common floating dtype among `tensors`."""
    counts: dict[torch.dtype, int] = {}
    for t in tensors:
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=counts.get) if counts else torch.float32
