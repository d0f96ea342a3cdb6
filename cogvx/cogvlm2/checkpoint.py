"""Read the official CogVLM2-Caption safetensors and rename the keys for our modules.

LM keys go to transformers' Llama layout (the fused QKV is split into q/k/v); vision keys keep
their names under `model.vision.`; the per-layer `rotary_emb.inv_freq` buffers are returned apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from cogvx.errors import WeightsFileError
from cogvx.weights.tensors import iter_safetensors

from .config import CogVLM2Config

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attn.language_expert_dense.weight": "self_attn.o_proj.weight",
    "mlp.language_mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.language_mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.language_mlp.down_proj.weight": "mlp.down_proj.weight",
}
_TOP_RENAMES = {
    "model.embed_tokens.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
VISION_PREFIX = "model.vision."


class CogVLM2CheckpointError(WeightsFileError):
    """The safetensors of a CogVLM2 folder are missing, unreadable or do not fit config.json."""


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a folder: those named by the shard index, else model.safetensors."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CogVLM2CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        files = sorted(folder.glob("*.safetensors"))
        files = [f for f in files if f.name.startswith("model")]
    if not files:
        raise CogVLM2CheckpointError(
            f"{folder}: no model.safetensors, model.safetensors.index.json or model-*.safetensors"
        )
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CogVLM2CheckpointError(f"{index}: shards listed but missing: {missing}")
    return files


def iter_tensors(
    files: list[Path], device: str | torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) from each file in turn, loaded onto `device` in the stored dtype."""
    dev = str(torch.device(device))
    for path in files:
        yield from iter_safetensors(path, dev, CogVLM2CheckpointError)


def load_state_dicts(
    folder: str | Path,
    cfg: CogVLM2Config,
    dtype: torch.dtype,
    device: str | torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
    """Return (llama_state_dict, vision_state_dict, inv_freq) converted to `dtype` on `device`.

    inv_freq is the checkpoint's rotary buffer (layer 0) upcast to float32, or None if absent.
    """
    q_rows = cfg.num_attention_heads * cfg.head_dim
    kv_rows = cfg.num_key_value_heads * cfg.head_dim
    llama: dict[str, torch.Tensor] = {}
    vision: dict[str, torch.Tensor] = {}
    inv_freqs: dict[int, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in iter_tensors(checkpoint_files(folder), device):
        if key.startswith(VISION_PREFIX):
            vision[key[len(VISION_PREFIX) :]] = tensor.to(dtype)
            continue
        if key in _TOP_RENAMES:
            llama[_TOP_RENAMES[key]] = tensor.to(dtype)
            continue
        match = _LAYER.match(key)
        if match is None:
            unknown.append(key)
            continue
        layer, rest = int(match.group(1)), match.group(2)
        prefix = f"model.layers.{layer}."
        if rest == "self_attn.language_expert_query_key_value.weight":
            if tensor.shape[0] != q_rows + 2 * kv_rows:
                raise CogVLM2CheckpointError(
                    f"{key}: shape {tuple(tensor.shape)} does not fit config.json "
                    f"({cfg.num_attention_heads} heads, {cfg.num_key_value_heads} KV heads of "
                    f"{cfg.head_dim}: {q_rows + 2 * kv_rows} rows expected)"
                )
            tensor = tensor.to(dtype)
            q, k, v = torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0)
            llama[prefix + "self_attn.q_proj.weight"] = q
            llama[prefix + "self_attn.k_proj.weight"] = k
            llama[prefix + "self_attn.v_proj.weight"] = v
        elif rest == "self_attn.rotary_emb.inv_freq":
            inv_freqs[layer] = tensor.to(torch.float32)
        elif rest in _LAYER_RENAMES:
            llama[prefix + _LAYER_RENAMES[rest]] = tensor.to(dtype)
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise CogVLM2CheckpointError(
            f"{folder}: {len(unknown)} unexpected keys ({shown}); this loader supports the "
            "caption checkpoint (language experts only, no vision experts)"
        )
    inv_freq = inv_freqs.get(0)
    if inv_freq is not None and any(not torch.equal(f, inv_freq) for f in inv_freqs.values()):
        raise CogVLM2CheckpointError(f"{folder}: layers store different rotary inv_freq buffers")
    return llama, vision, inv_freq
