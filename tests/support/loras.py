"""Random LoRAs for the tiny models, as peft and diffusers write them (unit and e2e tests)."""

from __future__ import annotations

from pathlib import Path

import torch

from cogvx.dev.tiny import build_tiny_pipeline

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def peft_lora(model: str = "t2v-5b", r: int = 4, alpha: float = 8.0, seed: int = 1):
    """(peft state dict without prefix, LoraConfig) of a random LoRA for the tiny `model`."""
    from peft import LoraConfig, get_peft_model_state_dict

    transformer = build_tiny_pipeline(model).transformer
    torch.manual_seed(seed)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False)
    transformer.add_adapter(config)
    with torch.no_grad():  # peft leaves B random only at init_lora_weights=False; make it sizeable
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.5)
    return get_peft_model_state_dict(transformer), config


def save_diffusers_lora(path: Path, **kwargs) -> Path:
    """A LoRA file as diffusers' save_lora_weights writes it (alpha in the file's metadata)."""
    from diffusers import CogVideoXPipeline

    sd, config = peft_lora(**kwargs)
    meta = {k: v for k, v in config.to_dict().items() if k in ("r", "lora_alpha", "use_rslora")}
    CogVideoXPipeline.save_lora_weights(
        path.parent,
        transformer_lora_layers=sd,
        weight_name=path.name,
        transformer_lora_adapter_metadata=meta,
    )
    return path
