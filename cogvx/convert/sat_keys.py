"""The SAT <-> diffusers transformer key map, both ways, LoRA deltas folded in."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from cogvx.convert.sat_layout import SatFamily, TransformerLayout
from cogvx.lora.sat_format import (
    LORA_TARGETS,
    SAT_PREFIX,
    SatConversionError,
    collect_lora,
    lora_deltas,
)

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
# mypy cannot type a lambda with default arguments against Callable[[], ...]: cast it
_Make = Callable[[], torch.Tensor]


@dataclass
class Planned:
    """A diffusers tensor to produce: its shape (known without reading data) and how to make it."""

    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def _adaln_half(t: torch.Tensor, i: int) -> torch.Tensor:
    """norm1 (i=0: chunks 0-2, 6-8) or norm2 (i=1: chunks 3-5, 9-11) of SAT's 12 modulations."""
    c = t.chunk(12, dim=0)
    return torch.cat(c[3 * i : 3 * i + 3] + c[6 + 3 * i : 9 + 3 * i])


def _check_fused(
    key: str, t: torch.Tensor, parts: int, inner: int, what: str, path: str | Path
) -> None:
    """A fused SAT tensor must hold `parts` equal blocks of the model's inner dim on dim 0."""
    if t.ndim == 0 or t.shape[0] != parts * inner:
        raise SatConversionError(
            f"{path}: {SAT_PREFIX}{key} has shape {tuple(t.shape)}; fused {what} need dim 0 = "
            f"{parts} x {inner} (the hidden size) = {parts * inner}"
        )


def _add_delta(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return (w.float() + delta.float()).to(w.dtype)


def check_lora_alpha(alpha: float, flag: str) -> None:
    """SAT's lora_alpha must be finite and > 0 (the LoRA scale is alpha / rank); else ValueError."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < math.inf:
        raise ValueError(
            f"{flag} must be > 0 and finite (SAT's lora_alpha; the LoRA scale is alpha / rank), "
            f"got {alpha!r}"
        )


def _delta_shapes(
    loras: dict[str, torch.Tensor], path: str | Path
) -> dict[str, tuple[tuple[int, int], str]]:
    """Per diffusers weight: the shape of its LoRA delta B @ A and the SAT matrices behind it."""
    modules = collect_lora(loras, path)  # refuses rank 0 and mismatched pairs
    out = {}
    for m in modules:
        for i, target in enumerate(LORA_TARGETS[m.module]):
            a, b = m.a[i], m.b[i]
            src = f"{SAT_PREFIX}transformer.layers.{m.layer}.attention.{m.module}.matrix_"
            out[f"transformer_blocks.{m.layer}.attn1.{target}.weight"] = (
                (b.shape[0], a.shape[1]),
                f"{src}B.{i} {tuple(b.shape)} @ {src}A.{i} {tuple(a.shape)}",
            )
    return out


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
    inner = layout.config["num_attention_heads"] * layout.config["attention_head_dim"]
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
                plan[names[0]] = Planned(tuple(t.shape), cast(_Make, lambda t=t: t))
            elif kind == "qkv":
                _check_fused(k, t, 3, inner, "q, k and v", path)
                shape = (t.shape[0] // 3, *t.shape[1:])
                for i, name in enumerate(names):
                    plan[name] = Planned(shape, cast(_Make, lambda t=t, i=i: t.chunk(3, dim=0)[i]))
            else:  # adaln
                _check_fused(k, t, 12, inner, "12 modulations", path)
                shape = (t.shape[0] // 2, *t.shape[1:])
                for i, name in enumerate(names):
                    plan[name] = Planned(shape, cast(_Make, lambda t=t, i=i: _adaln_half(t, i)))
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
        check_lora_alpha(lora_alpha, "--lora-alpha")
        shapes = _delta_shapes(loras, path)
        for name, delta in lora_deltas(loras, lora_alpha, path).items():
            if name not in plan:
                raise SatConversionError(f"{path}: LoRA targets {name}, which the model lacks")
            old = plan[name]
            shape, source = shapes[name]
            if shape != tuple(old.shape):
                raise SatConversionError(
                    f"{path}: the LoRA delta B @ A for {name} is {shape} ({source}), but the "
                    f"base weight is {tuple(old.shape)}"
                )
            plan[name] = Planned(
                old.shape, cast(_Make, lambda old=old, d=delta: _add_delta(old.make(), d()))
            )
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
