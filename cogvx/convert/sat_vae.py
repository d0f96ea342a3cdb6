"""SAT CogVideoX 3D VAE (`vae/3d-vae.pt`) key map to diffusers `AutoencoderKLCogVideoX`."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from cogvx.convert.sat import Log, write_model_folder
from cogvx.convert.sat_keys import Planned
from cogvx.lora.sat_format import SatConversionError

# Published VAE configs differ only in latent scaling (1.0: 2b 1.15258426, 5b 0.7; 1.5 inverts).
VAE_DEFAULTS = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    layers_per_block=3,
    norm_num_groups=32,
    temporal_compression_ratio=4,
)

# (SAT pattern, diffusers pattern); {up} is the reversed up-block index (num_blocks - 1 - i).
_RULES = [
    (r"encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up_blocks.{up}.resnets.\2."),
    (r"decoder\.up\.(\d+)\.upsample\.", r"decoder.up_blocks.{up}.upsamplers.0."),
]


def _num_blocks(keys: list[str], part: str, path: str | Path) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(part + r"\.(\d+)\.", k))}
    if not idx:
        raise SatConversionError(f"{path}: no {part}.N keys; not a SAT CogVideoX VAE")
    return max(idx) + 1


def vae_key_to_diffusers(key: str, num_blocks: int) -> str:
    """diffusers name of one SAT VAE key."""
    for src, dst in _RULES:
        m = re.match(src, key)
        if m:
            if "{up}" in dst:
                dst = dst.replace("{up}", str(num_blocks - 1 - int(m.group(1))))
            key = m.expand(dst) + key[m.end() :]
            break
    return key.replace(".nin_shortcut.", ".conv_shortcut.")


def vae_key_to_sat(key: str, num_blocks: int) -> str:
    """SAT name of one diffusers VAE key (the inverse map, for round trips and tests)."""
    key = key.replace(".conv_shortcut.", ".nin_shortcut.")
    inverse = [
        (r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
        (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.up.{up}.block.\2."),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"decoder.up.{up}.upsample."),
    ]
    for src, dst in inverse:
        m = re.match(src, key)
        if m:
            if "{up}" in dst:
                dst = dst.replace("{up}", str(num_blocks - 1 - int(m.group(1))))
            return m.expand(dst) + key[m.end() :]
    return key


def vae_to_sat(hf: dict[str, torch.Tensor], with_loss: bool = True) -> dict[str, torch.Tensor]:
    """A diffusers VAE state dict in SAT layout (`{"state_dict": ...}` content), for tests."""
    n = 1 + max(int(m.group(1)) for k in hf if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k)))
    out = {vae_key_to_sat(k, n): v.clone() for k, v in hf.items()}
    if with_loss:
        out["loss.logvar"] = torch.zeros(())
    return out


def detect_vae(sd: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> dict:
    """diffusers AutoencoderKLCogVideoX config (sizes) read from SAT VAE keys and shapes."""
    keys = [k for k in sd if not k.startswith("loss.")]
    if not any(k.startswith("encoder.") for k in keys) or not any(
        k.startswith("decoder.") for k in keys
    ):
        raise SatConversionError(
            f"{path} is not a SAT CogVideoX VAE checkpoint: expected encoder.* and decoder.* keys "
            f"(first keys: {list(sd)[:5]})"
        )
    n = _num_blocks(keys, r"encoder\.down", path)
    convs = [f"encoder.down.{i}.block.0.conv2.conv.weight" for i in range(n)]
    needed = [*convs, "encoder.conv_in.conv.weight", "encoder.conv_out.conv.weight"]
    needed.append("decoder.conv_out.conv.weight")
    missing = [k for k in needed if k not in sd]
    if missing:
        raise SatConversionError(
            f"{path}: unknown VAE layout, {len(missing)} of the keys that give its sizes are "
            f"missing: {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    bad = [f"{k} {tuple(sd[k].shape)}" for k in needed if sd[k].ndim != 5]
    if bad:
        raise SatConversionError(
            f"{path}: unknown VAE layout, expected 5-D Conv3d weights: {bad[:5]}"
        )
    channels = [sd[k].shape[0] for k in convs]
    per_block = len({k.split(".")[4] for k in keys if k.startswith("encoder.down.0.block.")})
    config: dict[str, Any] = dict(VAE_DEFAULTS)
    config.update(
        block_out_channels=tuple(channels),
        down_block_types=("CogVideoXDownBlock3D",) * n,
        up_block_types=("CogVideoXUpBlock3D",) * n,
        layers_per_block=per_block,
        in_channels=sd["encoder.conv_in.conv.weight"].shape[1],
        out_channels=sd["decoder.conv_out.conv.weight"].shape[0],
        latent_channels=sd["encoder.conv_out.conv.weight"].shape[0] // 2,
    )
    return config


def plan_vae(
    sd: dict[str, torch.Tensor], path: str | Path = "checkpoint"
) -> tuple[dict[str, Planned], list[str]]:
    """Map SAT VAE keys to diffusers (lazy); returns (plan, dropped `loss.*` keys)."""
    n = _num_blocks(list(sd), r"encoder\.down", path)
    plan, dropped = {}, []
    for k, t in sd.items():
        if k.startswith("loss."):
            dropped.append(k)
            continue
        plan[vae_key_to_diffusers(k, n)] = Planned(
            tuple(t.shape), cast("Callable[[], torch.Tensor]", lambda t=t: t)
        )
    return plan, dropped


def convert_vae(
    sd: dict[str, torch.Tensor],
    out_dir: str | Path,
    scaling_factor: float,
    invert_scale_latents: bool,
    dtype: torch.dtype = torch.float32,
    norm_num_groups: int | None = None,
    max_shard_size: str | int = "5GB",
    path: str | Path = "checkpoint",
    log: Log = print,
) -> Path:
    """Strictly convert a SAT VAE state dict into a diffusers `vae/` folder."""
    from diffusers import AutoencoderKLCogVideoX

    config = detect_vae(sd, path)
    config.update(scaling_factor=scaling_factor, invert_scale_latents=invert_scale_latents)
    if norm_num_groups is not None:
        config["norm_num_groups"] = norm_num_groups
    plan, dropped = plan_vae(sd, path)
    log(
        f"VAE: blocks {list(config['block_out_channels'])}, "
        f"{config['layers_per_block']} resnets per block, "
        f"{config['latent_channels']} latent channels, scaling {scaling_factor}"
        f"{' (inverted, 1.5)' if invert_scale_latents else ''}; dropped {len(dropped)} loss.* keys"
    )
    return write_model_folder(
        out_dir, AutoencoderKLCogVideoX, config, plan, dtype, max_shard_size, path, log
    )
