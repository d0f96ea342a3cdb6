"""Caption service: weights -> CogVLM2-Caption under a memory plan; video file -> frames -> text."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cogvx import checks, settings
from cogvx.cogvlm2.captioner import DEFAULT_PROMPT
from cogvx.cogvlm2.sampling import BASE_CLIP_SECONDS, STRATEGIES, sample_frame_indices
from cogvx.errors import CaptionSetupError, InputError
from cogvx.gpu import (
    HEADROOM_GB,
    measure_gpu,
    release_openmp_pool,
    releasing_openmp_pool,
    resolve_seed,
)
from cogvx.log import bound_library_logs, clip
from cogvx.log import log as log_line
from cogvx.models import get_deployment
from cogvx.settings import QUANTIZE_ENV
from cogvx.video import VideoInfo, VideoReadError, probe_video, read_frames, refuse_larger_frames
from cogvx.weights.install import find_weights_root, install_model

Log = Callable[[str], None]

DEPLOYMENT = get_deployment("caption")  # the row of cogvx.models.DEPLOYMENTS
MODEL_NAME = DEPLOYMENT.model  # folder name under the weights cache
HF_REPO = DEPLOYMENT.hf_repo
WEIGHTS_URL = DEPLOYMENT.weights_url  # None: COG_WEIGHTS must name one

MAX_FRAMES = 24  # frames the model sees ('chat': one per second; 'base': spread over 60 s)
READ_SECONDS = BASE_CLIP_SECONDS + 2  # neither rule looks further; longer videos are cut here
MAX_FRAME_PIXELS = 3840 * 2160  # larger frames are downscaled before preprocessing
DOWNSCALE_SHORT_SIDE = 1080  # ...to this short side (the model crops a 224 px square anyway)
MAX_SOURCE_PIXELS = 8192 * 8192  # stated frame sizes above this are refused (decoding cost)
# Longer prompts are refused before any tokenizing (10 MB took 21 s to tokenize): 8 characters a
# position of the model's 8,192, so no prompt that could fit is refused for its characters.
PROMPT_MAX_CHARS = 65_536  # refused above (checks.PROMPT_CHARS is where other prompts are cut)

QUANTIZE_CHOICES = ("none", "int8", "nf4")
# Peak GPU memory (GiB) per mode, 24 frames and 2048 new tokens: 12.5 B parameters (bf16 25 GB;
# int8 / nf4 keep embeddings, LM head, norms and convs in bf16) + ViT activations + KV cache.
# Estimates from the parameter count, not measured on a GPU.
# Request ranges and choices, checked here. The predictors' Input(ge=, le=, choices=) repeat
# them as literals (Cog's static schema parser reads only literals);
# tests/test_predictor_inputs.py holds both equal.
RANGES: dict[str, tuple[float, float]] = {
    "max_new_tokens": (1, 4096),
    "temperature": (0.0, 2.0),
    "top_p": (0.01, 1.0),
}
MEMORY_GIB = {"none": 24.5, "int8": 13.5, "nf4": 8.0}


def missing_weights_message() -> str:
    """How to provide the caption weights, which have no known public tarball."""
    return (
        f"the caption model ({HF_REPO}) has no public weight tarball. Build one and point "
        f"COG_WEIGHTS at it: download the {HF_REPO} folder (config.json, model safetensors, "
        "tokenizer files), run `python tools/pack_weights.py <folder> weights.tar`, host the tar "
        "on any HTTPS server and set COG_WEIGHTS=<its URL> (or COG_WEIGHTS=<local folder> on the "
        "machine itself)."
    )


def find_caption_root(folder: Path) -> Path:
    """The folder holding config.json and the safetensors (tarballs may wrap it in folders)."""

    def is_root(root: Path) -> bool:
        return (root / "config.json").is_file() and (
            (root / "model.safetensors").is_file()
            or (root / "model.safetensors.index.json").is_file()
        )

    return find_weights_root(
        folder,
        is_root,
        f"no CogVLM2-Caption folder (config.json beside model.safetensors or "
        f"model.safetensors.index.json) found in {folder}",
        CaptionSetupError,
    )


@dataclass(frozen=True)
class CaptionPlan:
    """Where the model runs and how its weights are stored, and why."""

    device: str  # "cuda" | "cpu"
    quantize: str | None  # None (bf16 on GPU, float32 on CPU) | "int8" | "nf4"
    reason: str


def plan_caption_memory(
    free_gib: float | None, can_quantize: bool, forced: str | None = None
) -> CaptionPlan:
    """Pick bf16, else int8, else nf4 (bitsandbytes) to fit `free_gib` of VRAM; None: no GPU."""
    if forced is not None and forced not in QUANTIZE_CHOICES:
        raise CaptionSetupError(
            f"{QUANTIZE_ENV}={forced!r} is not allowed; use one of {list(QUANTIZE_CHOICES)}"
        )
    if free_gib is None:
        return CaptionPlan("cpu", None, "no CUDA device: float32 on CPU (slow; for tests)")
    card = f"{free_gib:.1f} GiB free"
    if forced is not None:
        mode = None if forced == "none" else forced
        if mode and not can_quantize:
            raise CaptionSetupError(
                f"{QUANTIZE_ENV}={forced} needs the bitsandbytes package, which is not installed"
            )
        return CaptionPlan("cuda", mode, f"{card}; {QUANTIZE_ENV}={forced}")
    modes = ["none", "int8", "nf4"] if can_quantize else ["none"]
    for mode in modes:
        if free_gib >= MEMORY_GIB[mode] + HEADROOM_GB:
            stored = "bf16" if mode == "none" else f"{mode} (bitsandbytes)"
            return CaptionPlan(
                "cuda",
                None if mode == "none" else mode,
                f"{card}; weights in {stored} need ~{MEMORY_GIB[mode]:.1f} GiB",
            )
    smallest = MEMORY_GIB[modes[-1]] + HEADROOM_GB
    how = "even in nf4" if can_quantize else "in bf16 (bitsandbytes is not installed)"
    raise CaptionSetupError(
        f"GPU has {card}; the caption model needs at least ~{smallest:.1f} GiB {how}"
    )


def bitsandbytes_available() -> bool:
    """Whether the optional bitsandbytes package can be imported."""
    return importlib.util.find_spec("bitsandbytes") is not None


def downscaled_size(
    width: int, height: int, max_pixels: int = MAX_FRAME_PIXELS
) -> tuple[int, int] | None:
    """(width, height) to scale frames to before preprocessing, or None to keep them as they are:
    a short side of 1080, or less where that still leaves more than `max_pixels` (a wide strip
    is never scaled up)."""
    if width * height <= max_pixels:
        return None
    scale = min(DOWNSCALE_SHORT_SIDE / min(width, height), (max_pixels / (width * height)) ** 0.5)
    return max(2, int(width * scale / 2) * 2), max(2, int(height * scale / 2) * 2)  # even, down


@dataclass
class Clip:
    """The frames the model sees, where they come from, and the probe of the file."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    indices: list[int]
    info: VideoInfo


def load_clip(
    path: str | Path,
    strategy: str,
    log: Log = log_line,
    read_seconds: float = READ_SECONDS,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> Clip:
    """Probe the video (its first `read_seconds` at most), pick frames by `strategy`, decode."""
    checks.choice("strategy", strategy, STRATEGIES)
    t0 = time.perf_counter()
    info = probe_video(path, scan_seconds=read_seconds)
    name = clip(info.path.name)  # for messages: a URL's file name may hold a newline
    w, h = info.width, info.height
    refuse_larger_frames(info, MAX_SOURCE_PIXELS)
    checks.aspect_ratio(f"video {name}", w, h)
    if not info.complete:
        seen = "one frame per second from the start" if strategy == "chat" else "the first 60 s"
        log(
            f"video {name} lasts {_clock(info.duration)}; the '{strategy}' rule sees {MAX_FRAMES} "
            f"frames ({seen}), so only its first {read_seconds:g} s are read"
        )
    truncated = info.complete and info.index_frames > info.num_frames
    if truncated:
        log(
            f"video {name}: its index lists {info.index_frames} frames but only "
            f"{info.num_frames} are in the file (truncated); captioning those"
        )
    size = downscaled_size(w, h, max_pixels)
    if size is not None:
        log(f"video {name}: frames are {w}x{h}; downscaled to {size[0]}x{size[1]} on decoding")
    indices = _select(info, strategy)
    try:
        frames = read_frames(path, indices, info=info, size=size)
    except VideoReadError as exc:
        # A cut-off file's last frames may be partial or lack their references: keep what decodes.
        if not (truncated and exc.frames_decoded and exc.frames_decoded < info.num_frames):
            raise
        log(f"video {name}: only its first {exc.frames_decoded} frames decode; captioning those")
        info = info.head(exc.frames_decoded)
        indices = _select(info, strategy)
        frames = read_frames(path, indices, info=info, size=size)
    times = ", ".join(f"{info.timestamps[i]:.2f}" for i in indices)
    log(
        f"read {len(indices)} frames ('{strategy}') of {name} ({info.codec} {w}x{h}, "
        f"{info.fps:.3g} fps, {info.duration:.1f} s) in {time.perf_counter() - t0:.2f} s; "
        f"at t = {times} s"
    )
    return Clip(frames, indices, info)


def check_prompt(prompt: str | None) -> str:
    """The prompt stripped, valid Unicode, not empty and at most PROMPT_MAX_CHARS characters,
    checked before any tokenizing; InputError names it otherwise."""
    prompt = checks.plain_text(prompt, "prompt")
    if not prompt:
        raise InputError(
            f'prompt must not be empty; ask something about the video, e.g. "{DEFAULT_PROMPT}"'
        )
    if len(prompt) > PROMPT_MAX_CHARS:
        raise InputError(
            f"prompt is {len(prompt)} characters; at most {PROMPT_MAX_CHARS} are accepted (the "
            "model reads 8,192 tokens in all, frames and caption included). Shorten the prompt"
        )
    return prompt


def check_request(prompt: str | None, strategy: str, max_new_tokens: object) -> tuple[str, int]:
    """The prompt (`check_prompt`) and max_new_tokens of a caption request, checked with the
    strategy; InputError names the input otherwise."""
    prompt = check_prompt(prompt)
    checks.choice("strategy", strategy, STRATEGIES)
    lo, hi = map(int, RANGES["max_new_tokens"])
    return prompt, checks.integer("max_new_tokens", max_new_tokens, lo, hi)


def _select(info: VideoInfo, strategy: str) -> list[int]:
    return sample_frame_indices(
        info.num_frames, info.fps, strategy, MAX_FRAMES, timestamps=info.timestamps
    )


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class CaptionService:
    """CogVLM2-Caption loaded once, captioning videos."""

    def __init__(self, weights: str | None = None, log: Log = log_line) -> None:
        from cogvx.cogvlm2 import CogVLM2Captioner

        self.log = log
        source = str(weights) if weights else WEIGHTS_URL
        folder = find_caption_root(
            install_model(source, MODEL_NAME, missing_weights_message(), log)
        )
        forced = settings.quantize_mode()
        measured = measure_gpu()
        plan = plan_caption_memory(
            measured[0] if measured else None, bitsandbytes_available(), forced
        )
        log(f"memory plan: device={plan.device} quantize={plan.quantize} ({plan.reason})")
        t0 = time.perf_counter()
        self.captioner = CogVLM2Captioner.from_folder(
            folder, device=plan.device, quantize=plan.quantize
        )
        self.plan = plan
        bound_library_logs()
        release_openmp_pool()  # run() comes on another thread: see VideoService
        log(f"loaded {HF_REPO} from {folder} in {time.perf_counter() - t0:.1f}s")

    def check_length(
        self, num_frames: int, prompt: str, strategy: str, max_new_tokens: int
    ) -> None:
        """InputError if the prompt plus new tokens would run past the model's positions (one
        tokenization of the prompt: pass it through `check_prompt` first)."""
        from cogvx.cogvlm2 import build_inputs, build_position_ids
        from cogvx.cogvlm2.prompt import VISION

        model = self.captioner.model
        cfg = model.config
        tokenizer = self.captioner.tokenizer
        ids, types = build_inputs(
            tokenizer, prompt, num_frames, strategy, cfg.tokens_per_frame, cfg.pad_token_id
        )
        needed = int(build_position_ids(types[None]).max()) + 1 + max_new_tokens
        if needed <= cfg.max_position_embeddings:
            return
        # The question is the text after the last frame (and, for 'chat', that frame's number).
        vision = (types == VISION).nonzero()
        before = int(vision[-1]) + 1 if len(vision) else 1
        if strategy == "chat" and num_frames:
            before += len(tokenizer.encode(str(num_frames - 1), add_special_tokens=False))
        text = len(ids) - before
        room = cfg.max_position_embeddings - (needed - text)
        raise InputError(
            f"prompt is too long: with {num_frames} frames and max_new_tokens={max_new_tokens} "
            f"the sequence needs {needed} positions; the model has "
            f"{cfg.max_position_embeddings}, so the question (with the '{strategy}' template) "
            f"may take {max(room, 0)} tokens and takes {text}. Shorten the prompt or lower "
            "max_new_tokens"
        )

    @releasing_openmp_pool
    def run(
        self,
        *,
        video: str | Path,
        prompt: str,
        strategy: str,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> str:
        """Caption one video file."""
        prompt, max_new_tokens = check_request(prompt, strategy, max_new_tokens)
        seed = checks.seed(seed)
        temperature = float(checks.in_range("temperature", temperature, *RANGES["temperature"]))
        top_p = float(checks.in_range("top_p", top_p, *RANGES["top_p"]))
        clip = load_clip(video, strategy, self.log)
        self.check_length(len(clip.indices), prompt, strategy, max_new_tokens)
        if temperature > 0:
            seed = resolve_seed(seed, self.log)
        elif seed is not None:
            self.log("temperature is 0 (greedy decoding): the seed has no effect")
            seed = None
        t0 = time.perf_counter()
        ids = self.captioner.generate_ids(
            clip.frames, prompt, strategy, max_new_tokens, temperature, top_p, seed
        )
        text = self.captioner.decode(ids)
        seconds = time.perf_counter() - t0
        self.log(
            f"generated {len(ids)} tokens in {seconds:.1f}s ({len(ids) / max(seconds, 1e-9):.1f}"
            f" tokens/s); caption: {len(text)} characters"
        )
        return text
