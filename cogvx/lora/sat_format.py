"""SAT LoRA matrices (`matrix_A`/`matrix_B` on query_key_value and dense) in diffusers' key layout.

SAT's LoraLinear adds `scale * x @ A_i.T @ B_i.T` per output partition (q, k, v for
query_key_value), with scale = lora_alpha / r and lora_alpha = 1 by default. A leaf shared by a
user-LoRA request (cogvx.lora) and the SAT converter (cogvx.convert), so serving never imports
the converter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from cogvx.errors import WeightsFileError
from cogvx.log import clip

SAT_PREFIX = "model.diffusion_model."


class SatConversionError(WeightsFileError):
    """A checkpoint that cannot be converted; the message names the file and what is wrong."""


_KEY = re.compile(
    r"transformer\.layers\.(?P<n>\d+)\.attention\.(?P<mod>query_key_value|dense)"
    r"\.matrix_(?P<ab>[AB])\.(?P<i>\d+)$"
)
# The diffusers linears of SAT's LoRA partitions (the order of matrix_A.i / matrix_B.i).
LORA_TARGETS = {"query_key_value": ("to_q", "to_k", "to_v"), "dense": ("to_out.0",)}


@dataclass
class LoraModule:
    """One SAT LoRA linear: its layer, module and per-partition A/B matrices."""

    layer: int
    module: str
    a: dict[int, torch.Tensor]
    b: dict[int, torch.Tensor]

    @property
    def rank(self) -> int:
        """LoRA rank r (rows of A)."""
        return next(iter(self.a.values())).shape[0]


def collect_lora(sd: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> list[LoraModule]:
    """Group SAT LoRA matrices (keys with or without the SAT prefix) by module; strict checks."""
    mods: dict[tuple[int, str], LoraModule] = {}
    names: dict[tuple[int, str, str, int], str] = {}  # (layer, module, A|B, i) -> the file's key
    unknown = []
    for k, t in sd.items():
        name = k[len(SAT_PREFIX) :] if k.startswith(SAT_PREFIX) else k
        if ".matrix_" not in name:
            continue
        m = _KEY.match(name)
        if not m:
            unknown.append(k)
            continue
        key = (int(m["n"]), m["mod"])
        mod = mods.setdefault(key, LoraModule(key[0], key[1], {}, {}))
        (mod.a if m["ab"] == "A" else mod.b)[int(m["i"])] = t
        names[(*key, m["ab"], int(m["i"]))] = k
    if unknown:
        raise SatConversionError(
            f"{path}: LoRA matrices this exporter does not know: "
            f"{[clip(k, 120) for k in unknown[:10]]} "
            "(supported: attention.query_key_value and attention.dense)"
        )
    if not mods:
        raise SatConversionError(
            f"{path} holds no SAT LoRA matrices (keys like {SAT_PREFIX}transformer.layers.0."
            "attention.query_key_value.matrix_A.0)"
        )
    for mod in (mods[k] for k in sorted(mods)):
        parts = len(LORA_TARGETS[mod.module])
        where = f"{path}: layer {mod.layer} {mod.module}"
        if sorted(mod.a) != list(range(parts)) or sorted(mod.b) != list(range(parts)):
            raise SatConversionError(
                f"{where}: expected matrix_A.0-{parts - 1} and matrix_B.0-{parts - 1}, "
                f"found A {sorted(mod.a)} and B {sorted(mod.b)}"
            )
        for i in range(parts):
            a, b = mod.a[i], mod.b[i]
            for ab, t, r in (("A", a, 0), ("B", b, 1)):  # r: the dim holding the rank
                if t.ndim == 2 and 0 in t.shape:  # rank 0 (SAT's scale alpha / r): refused
                    what = "LoRA rank 0" if t.shape[r] == 0 else "an empty matrix"
                    raise SatConversionError(
                        f"{where} has {what}: {names[(mod.layer, mod.module, ab, i)]} has shape "
                        f"{tuple(t.shape)}; the rank and both dimensions must be at least 1"
                    )
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[0] != mod.rank:
                raise SatConversionError(
                    f"{where}: matrix_A.{i} {tuple(a.shape)} and matrix_B.{i} {tuple(b.shape)} "
                    "are not a rank-r pair [r, in] / [out, r]"
                )
    return [mods[k] for k in sorted(mods)]


def lora_to_diffusers(
    modules: list[LoraModule], alpha: float = 1.0, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """diffusers LoRA tensors (`transformer_blocks.N.attn1.to_q.lora_A.weight`, ...).

    SAT's scale alpha/r is folded into lora_B."""
    out = {}
    for mod in modules:
        scale = alpha / mod.rank
        for i, target in enumerate(LORA_TARGETS[mod.module]):
            base = f"transformer_blocks.{mod.layer}.attn1.{target}"
            a, b = mod.a[i], mod.b[i]
            dt = dtype or a.dtype
            out[f"{base}.lora_A.weight"] = a.to(dt).contiguous()
            out[f"{base}.lora_B.weight"] = (b.float() * scale).to(dt).contiguous()
    return out


def lora_deltas(
    sd: dict[str, torch.Tensor], alpha: float = 1.0, path: str | Path = "checkpoint"
) -> dict[str, Callable[[], torch.Tensor]]:
    """Weight deltas alpha/r * B @ A per diffusers weight key (lazy, fp32), for merging."""
    out: dict[str, Callable[[], torch.Tensor]] = {}
    for mod in collect_lora(sd, path):
        scale = alpha / mod.rank
        for i, target in enumerate(LORA_TARGETS[mod.module]):
            a, b = mod.a[i], mod.b[i]
            key = f"transformer_blocks.{mod.layer}.attn1.{target}.weight"
            out[key] = cast(
                "Callable[[], torch.Tensor]", lambda a=a, b=b, s=scale: (b.float() @ a.float()) * s
            )
    return out
