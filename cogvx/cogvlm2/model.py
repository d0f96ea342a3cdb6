"""CogVLM2-Caption: our vision tower feeding transformers' Llama (fused QKV split at load time)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, LlamaForCausalLM

from .checkpoint import CogVLM2CheckpointError, load_state_dicts
from .config import CogVLM2Config
from .prompt import VISION, build_position_ids
from .quantize import check_mode, quantize_linears
from .vision import VisionTower


class CheckpointRotaryEmbedding(nn.Module):
    """Rotary cos/sin from the checkpoint's inv_freq, with angles computed in the model dtype.

    The original builds `positions * inv_freq` and its cos/sin in the model dtype (bf16 on GPU),
    so this mirrors it; in float32 it equals transformers' default rotary embedding.
    """

    inv_freq: torch.Tensor  # a buffer

    def __init__(self, inv_freq: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inv_freq.to(torch.float32), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = x.dtype
        inv_freq = self.inv_freq.to(device=x.device, dtype=dtype)
        freqs = position_ids.to(dtype)[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


class CogVLM2Model(nn.Module):
    """Vision tower + Llama LM. `vision` and `language_model` hold the loaded weights."""

    def __init__(self, cfg: CogVLM2Config) -> None:
        super().__init__()
        self.config = cfg
        self.vision = VisionTower(cfg)
        self.language_model = LlamaForCausalLM(cfg.llama_config())
        formula = 1.0 / cfg.rope_theta ** (
            torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
        )
        self.language_model.model.rotary_emb = CheckpointRotaryEmbedding(formula)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
    ) -> CogVLM2Model:
        """Load the official layout (config.json, safetensors possibly sharded); no remote code.

        quantize: None, "int8" or "nf4" (bitsandbytes; the LM head stays in `dtype`).
        """
        check_mode(quantize)
        cfg = CogVLM2Config.from_folder(folder)
        dtype = dtype or default_dtype(device)
        with torch.device("meta"):
            model = cls(cfg)
        load_device = "cpu" if quantize else device
        llama_sd, vision_sd, inv_freq = load_state_dicts(folder, cfg, dtype, load_device)
        _load(model.language_model, llama_sd, folder, "language model")
        _load(model.vision, vision_sd, folder, "vision tower")
        if inv_freq is None:  # not stored: fall back to the formula the original used to init it
            inv_freq = 1.0 / cfg.rope_theta ** (
                torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim
            )
        if inv_freq.shape != (cfg.head_dim // 2,):
            raise CogVLM2CheckpointError(
                f"{folder}: rotary inv_freq has shape {tuple(inv_freq.shape)}, expected "
                f"({cfg.head_dim // 2},) for head width {cfg.head_dim}"
            )
        model.language_model.model.rotary_emb = CheckpointRotaryEmbedding(inv_freq.to(load_device))
        model.language_model.generation_config = generation_config(folder, cfg)
        model.requires_grad_(False)
        if quantize:
            quantize_linears(model, quantize, compute_dtype=dtype)
            model.to(device)  # bitsandbytes quantizes the weights on this move
        return model.eval()

    @property
    def device(self) -> torch.device:
        return self.vision.boi.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision.boi.dtype

    def encode_frames(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) pixels -> (T, tokens_per_frame, hidden) features to substitute."""
        return self.vision(pixel_values.to(device=self.device, dtype=self.dtype))

    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings (B, L, hidden) with the frame features written at VISION positions."""
        input_ids = input_ids.to(self.device)
        token_type_ids = token_type_ids.to(self.device)
        embeds = self.language_model.get_input_embeddings()(input_ids)
        vision_slots = token_type_ids == VISION
        n_slots = int(vision_slots.sum())
        if n_slots == 0:
            return embeds
        features = self.encode_frames(pixel_values).reshape(-1, embeds.shape[-1])
        if features.shape[0] != n_slots:
            raise ValueError(
                f"token_type_ids: {n_slots} vision slots for {pixel_values.shape[0]} frames "
                f"({features.shape[0]} features); the prompt and the frames disagree"
            )
        return embeds.masked_scatter(vision_slots[..., None], features.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        output_hidden_states: bool = False,
    ):
        """One full forward without cache; returns transformers' CausalLMOutputWithPast."""
        if input_ids.ndim == 1:
            input_ids, token_type_ids = input_ids[None], token_type_ids[None]
        embeds = self.embed(input_ids, token_type_ids, pixel_values)
        position_ids = build_position_ids(token_type_ids).to(self.device)
        # An explicit mask keeps transformers from reading repeated positions as packed sequences.
        mask = torch.ones(input_ids.shape, dtype=torch.long, device=self.device)
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )

    def generate_batch(
        self,
        rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        max_new_tokens: int = 2048,
        **kwargs,
    ) -> list[list[int]]:
        """Greedy generation for several prompts in one batch: (ids, types, pixels) per row.

        Rows are left-padded (`left_pad`); every row stops at its own end-of-sequence token and
        its ids are returned up to and including it, as `generate` returns them for that row
        alone."""
        ids, types, mask, positions = left_pad([(r[0], r[1]) for r in rows], self.pad_id())
        pixels = torch.cat([r[2] for r in rows])
        embeds = self.embed(ids, types, pixels)
        # transformers types generate's self as a protocol LlamaForCausalLM does not match
        out = self.language_model.generate(  # type: ignore[misc]
            inputs_embeds=embeds,
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **kwargs,
        )
        eos = kwargs.get("eos_token_id", self.language_model.generation_config.eos_token_id)
        stops = set(eos if isinstance(eos, list) else [eos]) - {None}
        result = []
        for row in torch.as_tensor(out).tolist():  # a tensor: no return_dict_in_generate
            end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
            result.append(row[:end])
        return result

    def pad_id(self) -> int:
        """The id left padding uses (never attended to)."""
        pad = self.language_model.generation_config.pad_token_id
        return int(pad if pad is not None else self.config.pad_token_id)

    def generate(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        max_new_tokens: int = 2048,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        **kwargs,
    ):
        """transformers' generate (KV cache) on the prompt; returns its output (new tokens only).

        Generated tokens take the positions after the prompt's last position id.
        """
        if input_ids.ndim == 1:
            input_ids, token_type_ids = input_ids[None], token_type_ids[None]
        embeds = self.embed(input_ids, token_type_ids, pixel_values)
        position_ids = build_position_ids(token_type_ids).to(self.device)
        mask = torch.ones(input_ids.shape, dtype=torch.long, device=self.device)
        sampling: dict[str, Any] = (
            {"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}
        )
        # transformers types generate's self as a protocol LlamaForCausalLM does not match
        return self.language_model.generate(  # type: ignore[misc]
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            **sampling,
            **kwargs,
        )


def left_pad(
    rows: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad (ids, types) rows to one length: (ids, types, attention mask, position ids).

    Each row keeps the position ids it has alone (`build_position_ids` of the unpadded row), so
    a padded row computes what it computes unbatched; pads are masked out."""
    length = max(int(ids.shape[0]) for ids, _ in rows)
    shape = (len(rows), length)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    types = torch.zeros(shape, dtype=torch.long)  # LANGUAGE
    mask = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    for i, (row_ids, row_types) in enumerate(rows):
        n = int(row_ids.shape[0])
        ids[i, length - n :] = row_ids
        types[i, length - n :] = row_types
        mask[i, length - n :] = 1
        positions[i, length - n :] = build_position_ids(row_types)
    return ids, types, mask, positions


def generation_config(folder: str | Path, cfg: CogVLM2Config) -> GenerationConfig:
    """Special ids for generate: generation_config.json's bos/eos/pad (eos may be a list).

    Only the ids are taken; sampling settings always come from the caller.
    """
    ids = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id}
    ids["pad_token_id"] = cfg.pad_token_id
    path = Path(folder) / "generation_config.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CogVLM2CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        ids.update({k: raw[k] for k in ids if raw.get(k) is not None})
    return GenerationConfig(**ids)


def _load(module: nn.Module, state: dict[str, torch.Tensor], folder, what: str) -> None:
    """Assign a converted state dict strictly, naming the folder and keys on mismatch."""
    shapes = {key: value.shape for key, value in module.state_dict().items()}
    expected = set(shapes)
    missing = sorted(expected - set(state))
    extra = sorted(set(state) - expected)
    if missing or extra:
        raise CogVLM2CheckpointError(
            f"{folder}: {what} weights do not match config.json: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for key, tensor in state.items():
        want = shapes[key]
        if tensor.shape != want:
            raise CogVLM2CheckpointError(
                f"{folder}: {what} tensor {key} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(want)}"
            )
    module.load_state_dict(state, strict=True, assign=True)
