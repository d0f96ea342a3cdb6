"""Caption a clip: frames -> pixels -> prompt -> generate -> text."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from .checkpoint import CogVLM2CheckpointError
from .model import CogVLM2Model
from .preprocess import preprocess_frames
from .prompt import build_inputs, check_template

DEFAULT_PROMPT = "Please describe this video in detail."


@dataclass
class CaptionInputs:
    """Model inputs for one clip: (L,) ids and token types, (T, 3, S, S) float32 pixels."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    pixel_values: torch.Tensor


class CogVLM2Captioner:
    """Tokenizer + CogVLM2Model with the original demo's prompt and decoding."""

    def __init__(self, model: CogVLM2Model, tokenizer: PreTrainedTokenizerFast) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        quantize: str | None = None,
    ) -> CogVLM2Captioner:
        """Load an official CogVLM2-Caption folder; dtype None: bf16 on CUDA, float32 on CPU.

        quantize: None, "int8" or "nf4" to store the linear layers with bitsandbytes.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise CogVLM2CheckpointError(f"{folder}: not a folder")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype: {dtype} is not a floating-point dtype")
        try:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CogVLM2CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from exc
        if tokenizer.bos_token_id is None:
            raise CogVLM2CheckpointError(f"{folder}: the tokenizer defines no bos token")
        model = CogVLM2Model.from_folder(folder, device=device, dtype=dtype, quantize=quantize)
        return cls(model, tokenizer)

    def prepare(
        self,
        frames: torch.Tensor | np.ndarray,
        prompt: str = DEFAULT_PROMPT,
        template: str = "chat",
    ) -> CaptionInputs:
        """Preprocess the frames and build the prompt for them (CPU tensors)."""
        check_template(template)
        cfg = self.model.config
        pixels = preprocess_frames(frames, cfg.vision.image_size)
        ids, types = build_inputs(
            self.tokenizer,
            prompt,
            pixels.shape[0],
            template,
            cfg.tokens_per_frame,
            cfg.pad_token_id,
        )
        return CaptionInputs(ids, types, pixels)

    @torch.inference_mode()
    def generate_ids(
        self,
        frames: torch.Tensor | np.ndarray,
        prompt: str = DEFAULT_PROMPT,
        template: str = "chat",
        max_new_tokens: int = 2048,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[int]:
        """New token ids. temperature 0 is greedy; above 0 samples with temperature and top-p."""
        _check_sampling(max_new_tokens, temperature, top_p, seed)
        inputs = self.prepare(frames, prompt, template)
        do_sample = temperature > 0
        device = self.model.device
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(
                inputs.input_ids,
                inputs.token_type_ids,
                inputs.pixel_values,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else 1.0,
                top_p=top_p,
            )
        return out[0].tolist()

    @torch.inference_mode()
    def generate_ids_batch(
        self,
        clips: Sequence[torch.Tensor | np.ndarray],
        prompt: str = DEFAULT_PROMPT,
        template: str = "chat",
        max_new_tokens: int = 2048,
    ) -> list[list[int]]:
        """Greedy new token ids of several clips in one batch (one list per clip, in order).

        Same ids as `generate_ids` clip by clip: prompts are left-padded, each keeps its own
        position ids and stops at its own end-of-sequence token. Greedy only: sampled decoding
        depends on the batch (the random stream is shared), so it stays one clip at a time.
        """
        _check_sampling(max_new_tokens, 0.0, 1.0, None)
        if not clips:
            return []
        rows = []
        for frames in clips:
            inputs = self.prepare(frames, prompt, template)
            rows.append((inputs.input_ids, inputs.token_type_ids, inputs.pixel_values))
        return self.model.generate_batch(rows, max_new_tokens=max_new_tokens)

    def caption_batch(
        self,
        clips: Sequence[torch.Tensor | np.ndarray],
        prompt: str = DEFAULT_PROMPT,
        template: str = "chat",
        max_new_tokens: int = 2048,
    ) -> list[str]:
        """Greedy captions of several clips in one batch."""
        ids = self.generate_ids_batch(clips, prompt, template, max_new_tokens)
        return [self.decode(row) for row in ids]

    def caption(
        self,
        frames: torch.Tensor | np.ndarray,
        prompt: str = DEFAULT_PROMPT,
        template: str = "chat",
        max_new_tokens: int = 2048,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        """Caption uint8 frames: torch (3, T, H, W) or numpy (T, H, W, 3)."""
        ids = self.generate_ids(frames, prompt, template, max_new_tokens, temperature, top_p, seed)
        return self.decode(ids)

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, special tokens dropped, outer whitespace stripped.

        Like the original (transformers 4.43), the folder's clean_up_tokenization_spaces setting
        is honoured ("word ." -> "word."), which transformers 5 skips for BPE tokenizers.
        """
        tok = self.tokenizer
        text = cast(  # one sequence of ids decodes to one str
            str, tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
        if tok.clean_up_tokenization_spaces:
            text = tok.clean_up_tokenization(text)
        return text.strip()


def _check_sampling(
    max_new_tokens: int, temperature: float, top_p: float, seed: int | None
) -> None:
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens: {max_new_tokens!r} is not an integer >= 1")
    if (
        not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature: {temperature!r} is not a finite number >= 0 (0 = greedy)")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p: {top_p!r} is not in (0, 1]")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
    ):
        raise ValueError(f"seed: {seed!r} is not None or an integer in [0, 2**63)")
