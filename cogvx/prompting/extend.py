"""Extend a short prompt into the long, concrete caption CogVideoX was trained on.

The LLM is any transformers-native instruct model with a chat template (the deployment's choice;
the README recommends Qwen2.5-7B-Instruct), loaded from a folder with no remote code and from
safetensors only. Decoding is greedy, so the same prompt gives the same extension. The result
is cut at a word boundary (within the word, for text without spaces) to what the video model
reads (226 T5 tokens), with the T5 tokenizer of the loaded video pipeline counting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cogvx import settings
from cogvx.errors import InputError, SetupError
from cogvx.log import log as log_line
from cogvx.settings import PROMPT_WEIGHTS_ENV

Log = Callable[[str], None]

SYSTEM_PROMPT = (
    "You write prompts for a text-to-video model that was trained on long, literal captions of "
    "short video clips. Rewrite the user's idea as one such caption: a single paragraph of at "
    "most 150 words, in English, in the present tense, describing only what a camera would see "
    "over about six seconds: the main subject and its appearance, the action and how it moves, "
    "the setting, the lighting and colours, and the camera's framing and motion. Keep every "
    "element the user asked for and invent nothing that contradicts it. No lists, no titles, no "
    "dialogue, no sounds, no text on screen, no quotation marks: answer with the caption only."
)
LLM_PROMPT_CHARS = 2000  # the idea the LLM reads at most (an extension is for short prompts)
LLM_FOLDER = "prompt-llm"  # its folder under the weights cache
MAX_NEW_TOKENS = 320  # ~150 words of English plus slack; the cut below fits the video model
IMAGE_HINT = "The video starts from a given first frame; describe the motion that follows."


@dataclass(frozen=True)
class LlmPlacement:
    """Where the LLM lives between calls and runs during one, and why."""

    resident: str  # "cuda" | "cpu"
    run_on: str  # "cuda" | "cpu"
    reason: str


def plan_llm(free_gib: float | None, llm_gib: float, headroom_gib: float = 2.0) -> LlmPlacement:
    """Keep the LLM on the card if it fits beside the video model, else park it in CPU memory
    and move it to the card only for the call (pure: the caller measures)."""
    if free_gib is None:
        return LlmPlacement("cpu", "cpu", "no CUDA device")
    if free_gib >= llm_gib + headroom_gib:
        return LlmPlacement("cuda", "cuda", f"{free_gib:.1f} GiB free: it stays on the GPU")
    return LlmPlacement(
        "cpu",
        "cuda",
        f"{free_gib:.1f} GiB free, it needs {llm_gib + headroom_gib:.1f}: kept in CPU memory and "
        "moved to the GPU for each extension",
    )


def fit_tokens(text: str, count: Callable[[str], int], limit: int) -> str:
    """The longest prefix of `text` that `count` says fits in `limit` tokens, cut at a word, or
    within the first word when not even that fits (text without spaces, e.g. Chinese)."""
    if count(text) <= limit:
        return text
    words = text.split()
    n = _longest(len(words), lambda k: count(" ".join(words[:k])) <= limit)
    if n or not words:
        return " ".join(words[:n])
    first = words[0]
    return first[: _longest(len(first), lambda k: count(first[:k]) <= limit)]


def _longest(size: int, fits: Callable[[int], bool]) -> int:
    """The largest k in [0, size] with fits(k), for fits true up to some k and false after."""
    lo, hi = 0, size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class PromptExtender:
    """A chat LLM and its tokenizer, placed under `LlmPlacement`."""

    def __init__(self, model: Any, tokenizer: Any, placement: LlmPlacement, log: Log = log_line):
        self.model, self.tokenizer, self.placement, self.log = model, tokenizer, placement, log

    @classmethod
    def load(
        cls, folder: str | Path, free_gib: float | None, log: Log = log_line
    ) -> PromptExtender:
        """Load a transformers-native chat model from `folder` (safetensors, no remote code)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        folder = Path(folder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False
            )
            dtype = torch.bfloat16 if free_gib is not None else torch.float32
            model = AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                dtype=dtype,
            ).eval()  # fmt: skip
        except (OSError, ValueError) as exc:
            raise SetupError(
                f"prompt LLM in {folder}: cannot load it as a transformers chat model with "
                f"safetensors weights ({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        if not getattr(tokenizer, "chat_template", None):
            raise SetupError(f"prompt LLM in {folder}: its tokenizer has no chat template")
        params = sum(p.numel() for p in model.parameters())
        placement = plan_llm(free_gib, params * 2 / 2**30)
        model.to(placement.resident)
        log(
            f"prompt LLM: {type(model).__name__}, {params / 1e9:.2f} B parameters, "
            f"{placement.reason}; loaded in {time.perf_counter() - t0:.1f}s"
        )
        return cls(model, tokenizer, placement, log)

    def messages(self, prompt: str, image: bool = False) -> list[dict[str, str]]:
        """The chat: our system prompt, then the user's idea (and the I2V hint)."""
        user = f"{IMAGE_HINT}\n{prompt}" if image else prompt
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    @torch.inference_mode()
    def answer(
        self, messages: list[dict[str, str]], max_new_tokens: int, seed: int | None = None
    ) -> tuple[str, int]:
        """The model's reply to `messages`, whitespace and outer quotes trimmed, and how many
        tokens it generated: greedy, or sampled (temperature 0.8, top-p 0.95) with `seed`."""
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        device = self.placement.run_on
        moved = device != self.placement.resident
        sampling: dict[str, Any] = {"do_sample": False}
        if seed is not None:
            sampling = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}
        if moved:
            self.model.to(device)
        try:
            with torch.random.fork_rng(enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(
                    **{k: v.to(device) for k, v in ids.items()},
                    max_new_tokens=max_new_tokens,
                    **sampling,
                )
        finally:
            if moved:
                self.model.to(self.placement.resident)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        new = out[0, ids["input_ids"].shape[1] :]
        text = " ".join(self.tokenizer.decode(new, skip_special_tokens=True).split())
        return text.strip('"').strip(), len(new)

    def extend(
        self, prompt: str, count_tokens: Callable[[str], int], limit: int, image: bool = False
    ) -> str:
        """The extended prompt (greedy, so reproducible), cut to `limit` video-model tokens."""
        t0 = time.perf_counter()
        text, generated = self.answer(
            self.messages(prompt[:LLM_PROMPT_CHARS], image), MAX_NEW_TOKENS
        )
        if not text:
            self.log("prompt LLM returned nothing: the prompt is used as written")
            return prompt
        cut = fit_tokens(text, count_tokens, limit)
        took = f"{generated} LLM tokens in {time.perf_counter() - t0:.1f}s"
        if not cut:
            self.log(
                f"prompt LLM's answer ({took}) has no part that fits in {limit} T5 tokens: "
                "the prompt is used as written"
            )
            return prompt
        note = "" if cut == text else f", cut to {limit} T5 tokens"
        self.log(f"extended prompt ({took}{note})")
        return cut


def missing_extender_message() -> str:
    """Why extend_prompt is unavailable here, and how a deployment enables it."""
    return (
        "extend_prompt needs a prompt LLM, which this deployment does not load: set "
        f"{PROMPT_WEIGHTS_ENV} to a tarball URL or folder of a transformers chat model with "
        "safetensors weights (Qwen2.5-7B-Instruct is the one we recommend, see the README), or "
        "leave extend_prompt off"
    )


def require(extender: PromptExtender | None) -> PromptExtender:
    """`extender`, or the InputError saying how to get one."""
    if extender is None:
        raise InputError(missing_extender_message())
    return extender


def load_extender_from_env(log: Log = log_line) -> PromptExtender | None:
    """The LLM COGVX_PROMPT_WEIGHTS names (after the video model: it plans around its memory)."""
    source = settings.prompt_weights_source()
    if not source:
        return None
    from cogvx.gpu import measure_gpu
    from cogvx.weights.install import find_weights_root, install_model

    folder = install_model(source, LLM_FOLDER, f"{PROMPT_WEIGHTS_ENV} is empty", log)
    not_found = f"{PROMPT_WEIGHTS_ENV}: no config.json in {folder} (expected a transformers folder)"
    root = find_weights_root(folder, lambda p: (p / "config.json").is_file(), not_found)
    measured = measure_gpu()
    return PromptExtender.load(root, measured[0] if measured else None, log)
