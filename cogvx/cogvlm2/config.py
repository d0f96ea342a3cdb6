"""Configuration of a CogVLM2-Caption checkpoint, read from its official config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import LlamaConfig

from cogvx.errors import SetupError

DEFAULT_ROPE_THETA = 500000.0  # hard-coded by the original modeling code, absent from config.json
DEFAULT_PAD_TOKEN_ID = 128002  # the original hard-codes this id for the vision placeholders


class CogVLM2ConfigError(SetupError):
    """config.json of a CogVLM2 folder is missing or lacks a required field."""


@dataclass(frozen=True)
class VisionConfig:
    """EVA2-CLIP vision tower sizes (the `vision_config` block of config.json)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_heads: int
    image_size: int
    patch_size: int
    in_channels: int = 3
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"

    @property
    def grid_size(self) -> int:
        """Patches per side before the 2x2 downsampling conv."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Patch tokens plus the CLS token."""
        return self.grid_size**2 + 1


@dataclass(frozen=True)
class CogVLM2Config:
    """Language-model and vision sizes of one checkpoint, plus the special token ids."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    vision: VisionConfig
    hidden_act: str = "silu"
    rope_theta: float = DEFAULT_ROPE_THETA
    bos_token_id: int = 128000
    eos_token_id: int = 128001
    pad_token_id: int = DEFAULT_PAD_TOKEN_ID
    template_version: str = "chat"

    @property
    def head_dim(self) -> int:
        """Width of one attention head of the language model."""
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_tokens_per_frame(self) -> int:
        """Tokens left per frame after the 2x2 stride-2 conv."""
        return (self.vision.grid_size // 2) ** 2

    @property
    def tokens_per_frame(self) -> int:
        """Placeholder slots per frame in the prompt: boi + patch tokens + eoi."""
        return self.patch_tokens_per_frame + 2

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> CogVLM2Config:
        """Build from the parsed official config.json; `source` names the file in errors."""
        try:
            v = raw["vision_config"]
            vision = VisionConfig(
                hidden_size=int(v["hidden_size"]),
                intermediate_size=int(v["intermediate_size"]),
                num_hidden_layers=int(v["num_hidden_layers"]),
                num_heads=int(v["num_heads"]),
                image_size=int(v["image_size"]),
                patch_size=int(v["patch_size"]),
                in_channels=int(v.get("in_channels", 3)),
                layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
                hidden_act=str(v.get("hidden_act", "gelu")),
            )
            heads = int(raw["num_attention_heads"])
            cfg = cls(
                hidden_size=int(raw["hidden_size"]),
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_multi_query_heads", heads)),
                vocab_size=int(raw["vocab_size"]),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 8192)),
                vision=vision,
                hidden_act=str(raw.get("hidden_act", "silu")),
                rope_theta=float(raw.get("rope_theta", DEFAULT_ROPE_THETA)),
                bos_token_id=int(raw.get("bos_token_id", 128000)),
                eos_token_id=_first_id(raw.get("eos_token_id", 128001)),
                pad_token_id=int(raw.get("pad_token_id", DEFAULT_PAD_TOKEN_ID)),
                template_version=str(raw.get("template_version", "chat")),
            )
        except KeyError as exc:
            raise CogVLM2ConfigError(f"{source}: required field {exc} is missing") from exc
        except (TypeError, ValueError) as exc:
            raise CogVLM2ConfigError(f"{source}: bad field value ({exc})") from exc
        cfg._check(source)
        return cfg

    @classmethod
    def from_folder(cls, folder: str | Path) -> CogVLM2Config:
        """Read `<folder>/config.json`."""
        path = Path(folder) / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CogVLM2ConfigError(f"{path}: not found (expected the official layout)") from exc
        except json.JSONDecodeError as exc:
            raise CogVLM2ConfigError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(raw, source=str(path))

    def _check(self, source: str) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be divisible by num_multi_query_heads")
        if self.head_dim % 2:
            problems.append("the attention head width must be even (rotary embedding)")
        if self.vision.hidden_size % self.vision.num_heads:
            problems.append("vision hidden_size must be divisible by vision num_heads")
        if self.vision.grid_size < 2:
            problems.append("vision image_size must be at least 2 * patch_size")
        if problems:
            raise CogVLM2ConfigError(f"{source}: " + "; ".join(problems))

    def llama_config(self) -> LlamaConfig:
        """The transformers Llama config of the language model (fused QKV split at load time)."""
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act=self.hidden_act,
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            attention_bias=False,
            mlp_bias=False,
            tie_word_embeddings=False,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )


def _first_id(value: Any) -> int:
    """An id field may be an int or a list of ints; keep the first."""
    if isinstance(value, list):
        return int(value[0])
    return int(value)
