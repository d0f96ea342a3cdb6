"""Load the released VEnhancer checkpoints (venhancer_paper.pt / venhancer_v2.pt) into our modules.

The checkpoint is a flat state dict with the original names (ModelScope layout): the UNet at the
top level and the ControlNet under `VideoControlNet.`. Every key must be consumed and every
parameter of our modules filled, with matching shapes (1x1 Conv1d/Linear reshapes allowed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import UNet3DConditionModel

from cogvx.errors import WeightsFileError
from cogvx.venhancer.controlnet import VEnhancerUNet, VideoControlNet
from cogvx.venhancer.unet import patch_resampling
from cogvx.weights.tensors import load_state_dict

CONTROLNET_PREFIX = "VideoControlNet."
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


class CheckpointError(WeightsFileError):
    """A checkpoint file cannot be read or does not fit the VEnhancer modules."""


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch pickle (weights_only=True, never code)."""
    return load_state_dict(
        path,
        what="VEnhancer checkpoint",
        error=CheckpointError,
        suffixes=(".safetensors", *PICKLE_SUFFIXES),
    )


def infer_unet_config(sd: Mapping[str, torch.Tensor]) -> dict:
    """The UNet3DConditionModel config of an original-layout state dict (UNet keys, no prefix)."""
    try:
        conv_in = sd["input_blocks.0.0.weight"]
        head_dim = sd["input_blocks.0.1.proj_in.weight"].shape[0] // 8
        blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("input_blocks.")})
        levels: list[list[int]] = [[]]
        for i in blocks[1:]:
            if f"input_blocks.{i}.op.weight" in sd:
                levels.append([])
            else:
                levels[-1].append(i)
        channels = [sd[f"input_blocks.{lv[0]}.0.out_layers.3.weight"].shape[0] for lv in levels]
        attn = [f"input_blocks.{lv[0]}.1.norm.weight" in sd for lv in levels]
        first = levels[attn.index(True)][0]
        cross_dim = sd[f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"not a VEnhancer/ModelScope UNet state dict (missing {e})") from e
    return {
        "in_channels": conv_in.shape[1],
        "out_channels": sd["out.2.weight"].shape[0],
        "down_block_types": [("CrossAttnDownBlock3D" if a else "DownBlock3D") for a in attn],
        "up_block_types": [("CrossAttnUpBlock3D" if a else "UpBlock3D") for a in attn[::-1]],
        "block_out_channels": channels,
        "layers_per_block": len(levels[0]),
        "norm_num_groups": 32,
        "cross_attention_dim": cross_dim,
        "attention_head_dim": head_dim,
    }


_RESNET = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _sub(prefix: str, part: int, rest: str, j: int, attn: bool) -> str:
    """Rename `<block>.<part>.<rest>` of one original [ResBlock, Spatial, Temporal, (resample)]."""
    if part == 0:  # ResBlock, its temporal convs included
        if rest.startswith("temopral_conv."):
            return f"{prefix}.temp_convs.{j}.{rest.removeprefix('temopral_conv.')}"
        for old, new in _RESNET.items():
            if rest.startswith(old + "."):
                return f"{prefix}.resnets.{j}.{new}{rest[len(old) :]}"
    elif attn and part == 1:
        return f"{prefix}.attentions.{j}.{rest}"
    elif attn and part == 2:
        return f"{prefix}.temp_attentions.{j}.{rest}"
    raise KeyError(rest)


def map_key(key: str, config: dict) -> str:
    """Diffusers name of one original UNet/ControlNet-encoder key (raises KeyError if unknown)."""
    nrb = config["layers_per_block"]
    n_levels = len(config["block_out_channels"])
    attn_down = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    fixed = {
        "time_embed.0.": "time_embedding.linear_1.",
        "time_embed.2.": "time_embedding.linear_2.",
        "out.0.": "conv_norm_out.",
        "out.2.": "conv_out.",
        "input_blocks.0.0.": "conv_in.",
        "input_blocks.0.1.": "transformer_in.",
    }
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.fullmatch(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.+)", key)
    if not m:
        raise KeyError(key)
    kind, idx, part, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if kind == "middle_block":  # ResBlock, Spatial, Temporal, ResBlock
        if part is not None or idx > 3:
            raise KeyError(key)
        if idx in (0, 3):
            return _sub("mid_block", 0, rest, idx // 3, True)
        return _sub("mid_block", idx, rest, 0, True)
    part = None if part is None else int(part)
    if kind == "input_blocks":
        k = idx - 1  # after the stem: per level nrb blocks, then a downsampler (not on the last)
        per_level = nrb + 1
        level, j = divmod(k, per_level)
        if level >= n_levels:
            raise KeyError(key)
        if j == nrb:
            if part is None and rest.startswith("op.") and level < n_levels - 1:
                return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
            raise KeyError(key)
        if part is None:
            raise KeyError(key)
        return _sub(f"down_blocks.{level}", part, rest, j, attn_down[level])
    level, j = divmod(idx, nrb + 1)  # output_blocks: nrb+1 blocks per level, deepest first
    if level >= n_levels or part is None:
        raise KeyError(key)
    attn = attn_down[n_levels - 1 - level]
    up_part = 3 if attn else 1
    if j == nrb and part == up_part and level < n_levels - 1 and rest.startswith("conv."):
        return f"up_blocks.{level}.upsamplers.0.{rest}"
    return _sub(f"up_blocks.{level}", part, rest, j, attn)


_CONTROLNET_FIXED = {
    "hint_time_zero_linear.": "hint_time_embedding.",
    "scale_cond.0.": "scale_embedding.linear_1.",
    "scale_cond.2.": "scale_embedding.linear_2.",
    "input_hint_block.": "hint_conv.",
    "middle_block_out.0.": "controlnet_mid_block.",
}


def map_controlnet_key(key: str, config: dict) -> str:
    """Diffusers-style name of one original ControlNet key (without the `VideoControlNet.`)."""
    for old, new in _CONTROLNET_FIXED.items():
        if key.startswith(old):
            return new + key[len(old) :]
    m = re.fullmatch(r"zero_convs\.(\d+)\.0\.(weight|bias)", key)
    if m:
        return f"controlnet_down_blocks.{m.group(1)}.{m.group(2)}"
    if key.startswith(("out.", "output_blocks.")):
        raise KeyError(key)
    return map_key(key, config)


def _fit(name: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if value.shape == target.shape:
        return value
    squeezed = [s for s in value.shape if s != 1] == [s for s in target.shape if s != 1]
    if value.numel() == target.numel() and squeezed and value.dim() != target.dim():
        return value.reshape(target.shape)  # Conv1d/Conv2d 1x1 <-> Linear
    raise CheckpointError(
        f"checkpoint tensor for {name} has shape {tuple(value.shape)}; "
        f"the model expects {tuple(target.shape)}"
    )


def _convert(
    sd: Mapping[str, torch.Tensor], mapper, model: torch.nn.Module, what: str
) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        try:
            name = mapper(key)
        except KeyError:
            unknown.append(key)
            continue
        if name not in expected or name in out:
            unknown.append(key)
            continue
        out[name] = _fit(name, value, expected[name])
    missing = sorted(set(expected) - set(out))
    if unknown or missing:
        raise CheckpointError(
            f"{what} checkpoint does not fit: {len(unknown)} unused keys "
            f"(e.g. {unknown[:3]}), {len(missing)} missing (e.g. {missing[:3]})"
        )
    return out


def convert_state_dict(
    sd: Mapping[str, torch.Tensor], config: dict | None = None
) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(unet config, UNet state dict, ControlNet state dict) in our names, checked strictly."""
    unet_sd = {k: v for k, v in sd.items() if not k.startswith(CONTROLNET_PREFIX)}
    cn_sd = {
        k[len(CONTROLNET_PREFIX) :]: v for k, v in sd.items() if k.startswith(CONTROLNET_PREFIX)
    }
    if not cn_sd:
        raise CheckpointError("checkpoint has no `VideoControlNet.` keys: not a VEnhancer model")
    config = config or infer_unet_config(unet_sd)
    with torch.device("meta"):
        unet = UNet3DConditionModel(**config)
        controlnet = VideoControlNet.from_unet_config(config)
    unet_out = _convert(unet_sd, lambda k: map_key(k, config), unet, "UNet")
    cn_out = _convert(cn_sd, lambda k: map_controlnet_key(k, config), controlnet, "ControlNet")
    return config, unet_out, cn_out


def load_venhancer_unet(
    source: str | Path | Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> VEnhancerUNet:
    """Build the UNet + ControlNet from an original checkpoint file or state dict."""
    sd = load_checkpoint(source) if isinstance(source, (str, Path)) else source
    config, unet_sd, cn_sd = convert_state_dict(sd)
    with torch.device("meta"):
        unet = patch_resampling(UNet3DConditionModel(**config))
        controlnet = VideoControlNet.from_unet_config(config)
    for module, weights in ((unet, unet_sd), (controlnet, cn_sd)):
        weights = {k: v.to(device=device, dtype=dtype) for k, v in weights.items()}
        module.load_state_dict(weights, strict=True, assign=True)
    model = VEnhancerUNet(unet, controlnet).eval().requires_grad_(False)
    leftover = [n for n, t in model.state_dict().items() if t.is_meta]
    if leftover:
        raise CheckpointError(f"weights not loaded: {leftover[:3]}")
    return model


def convert_checkpoint(
    src: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float16
) -> Path:
    """Write `unet/` and `controlnet/` (diffusers, safetensors) from an original checkpoint."""
    model = load_venhancer_unet(src, dtype=dtype)
    out = Path(out_dir)
    model.unet.save_pretrained(out / "unet")
    model.controlnet.save_pretrained(out / "controlnet")
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=convert_checkpoint.__doc__)
    parser.add_argument("checkpoint", help="venhancer_paper.pt / venhancer_v2.pt or .safetensors")
    parser.add_argument("out_dir", help="folder to write unet/ and controlnet/ into")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    args = parser.parse_args()
    print(convert_checkpoint(args.checkpoint, args.out_dir, getattr(torch, args.dtype)))
