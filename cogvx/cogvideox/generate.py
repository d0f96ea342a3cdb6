"""CogVideoX generation: load a variant's pipeline under the memory policy, check inputs, run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from cogvx import checks
from cogvx.cogvideox.cost import GenerationCost, generation_cost
from cogvx.cogvideox.tiling import set_tiling
from cogvx.errors import InputError
from cogvx.gpu import MemoryPlan, apply_plan, cpu_generator, current_plan, resolve_seed, torch_dtype
from cogvx.log import bound_library_logs
from cogvx.log import log as log_line
from cogvx.lora import LoraSlot
from cogvx.models import Variant, get_variant
from cogvx.speed.apply import apply_speedups, warm_up_or_fall_back
from cogvx.speed.cache import (
    DEFAULT_FAST_MODE,
    FastModeSlot,
    check_fast_mode,
    counting,
    install_counter,
)
from cogvx.speed.select import SpeedPlan
from cogvx.video import to_uint8_frames
from cogvx.weights.install import find_weights_root, install_model

STEPS_RANGE = (1, 100)  # denoising steps a request may ask for
STRENGTH_RANGE = (0.0, 1.0)  # video-to-video: share of the input re-noised

Log = Callable[[str], None]


def find_pipeline_root(folder: Path) -> Path:
    """The folder holding model_index.json (tarballs may wrap it in one or two folders)."""
    return find_weights_root(
        folder,
        lambda root: (root / "model_index.json").is_file(),
        f"no diffusers pipeline (model_index.json) found in {folder}; the weights must be a "
        "diffusers folder such as `save_pretrained` writes",
    )


def missing_weights_message(v: Variant) -> str:
    """How to provide weights for a model with no known public tarball."""
    return (
        f"model {v.name} ({v.hf_repo}) has no public weight tarball. Build one and point "
        f"COG_WEIGHTS at it: download the diffusers folder of {v.hf_repo}, run "
        "`python tools/pack_weights.py <folder> weights.tar`, host the tar on any HTTPS server "
        "and set COG_WEIGHTS=<its URL> (or COG_WEIGHTS=<local folder> on the machine itself)."
    )


def resolve_weights(v: Variant, weights: str | None, log: Log) -> Path:
    """Install (or reuse) the variant's weights and return the pipeline folder."""
    source = str(weights) if weights else v.weights_url
    folder = install_model(source, v.name, missing_weights_message(v), log=log)
    return find_pipeline_root(folder)


def use_variant_scheduler(pipe: Any, v: Variant, log: Log) -> None:
    """Run the scheduler THUDM runs the model with, whatever the folder ships.

    The released diffusers folders all ship CogVideoXDDIMScheduler; THUDM's cli_demo swaps in
    CogVideoXDPMScheduler for 5b / 1.5 (and keeps DDIM for 2b), always with trailing timesteps,
    from the shipped config (betas, SNR shift, v-prediction). The variants table names the class.
    """
    import diffusers

    shipped = type(pipe.scheduler).__name__
    cls = getattr(diffusers, v.scheduler)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    note = "" if shipped == v.scheduler else f" (the folder ships {shipped})"
    log(f"scheduler: {v.scheduler}, {pipe.scheduler.config.timestep_spacing}{note}")


@dataclass
class Request:
    """One generation, already checked (see `checks`)."""

    prompt: str
    negative_prompt: str
    num_frames: int | None  # None: the model's default (video-to-video: the video's count)
    num_inference_steps: int
    guidance_scale: float
    use_dynamic_cfg: bool
    seed: int | None
    image: Any = None  # PIL image for image-to-video, already at the output size
    video: Any = None  # (T, H, W, 3) uint8 frames for video-to-video, already at the model size
    strength: float = 0.8  # video-to-video: how much of the input is re-noised (1 = all)
    lora_url: str | None = None
    lora_scale: float = 1.0
    fast_mode: str = "off"  # see cogvx.speed.cache (the predictors default to "balanced")


@dataclass
class Result:
    frames: np.ndarray  # (T, H, W, 3) uint8
    seed: int
    seconds: float


class VideoModel:
    """A loaded CogVideoX pipeline, its variant row and the memory plan it runs under."""

    def __init__(self, variant: Variant, pipe: Any, plan: MemoryPlan, log: Log = log_line):
        self.variant, self.pipe, self.plan, self.log = variant, pipe, plan, log
        self.lora = LoraSlot(pipe, variant.name, log=log)
        self.fast = FastModeSlot(pipe.transformer, log=log)
        self.speed: SpeedPlan | None = None  # the setup-time speed-ups that ran (GPU)
        self.step_callback: Callable[[], None] | None = None  # after each step (multi-GPU)
        self.decode = True  # False: stop at the latents, return no frames (multi-GPU ranks > 0)
        self._v2v: Any = None

    @property
    def v2v_pipe(self) -> Any:
        """The video-to-video pipeline over the same modules (no extra memory), made once."""
        if self._v2v is None:
            from diffusers import CogVideoXVideoToVideoPipeline

            self._v2v = CogVideoXVideoToVideoPipeline(**self.pipe.components)
            self._v2v.set_progress_bar_config(mininterval=1.0)
        return self._v2v

    @classmethod
    def load(
        cls, model: str, weights: str | None = None, log: Log = log_line, warm_up: bool = True
    ) -> VideoModel:
        """Fetch weights (COG_WEIGHTS overrides the table's URL), load, place on the device.

        warm_up=False leaves the GPU warm-up to the caller (a multi-GPU rank, after its split)."""
        import diffusers

        v = get_variant(model)
        folder = resolve_weights(v, weights, log)
        v = v.with_folder_overrides(folder)
        plan = current_plan(v.memory)
        t0 = time.perf_counter()
        pipe = getattr(diffusers, v.pipeline).from_pretrained(
            folder, dtype=torch_dtype(v.dtype, plan.device)
        )
        pipe.set_progress_bar_config(mininterval=1.0)
        for module in pipe.components.values():  # inference only; and a LoRA's load/unload
            if isinstance(module, torch.nn.Module):  # freezes the base weights: compiled graphs
                module.requires_grad_(False)  # guard on requires_grad, so freeze them up front
        use_variant_scheduler(pipe, v, log)
        apply_plan(pipe, plan, log)
        bound_library_logs()  # diffusers logs the truncated part of a prompt: clip its records
        install_counter(pipe.transformer)  # before any compile: the blocks are traced with it
        speed = apply_speedups(pipe, plan.offload, log)
        log(f"loaded {v.name} from {folder} in {time.perf_counter() - t0:.1f}s")
        loaded = cls(v, pipe, plan, log)
        loaded.speed = speed
        if plan.device == "cuda" and warm_up:
            loaded.warm_up()
        return loaded

    def warm_up(self, rung: int | None = None) -> None:
        """Compile and meet kernel failures at setup, not in request 1 (GPU only). `rung`: try
        only that step of the fallback ladder (multi-GPU ranks; WarmUpFailed if it fails)."""
        v = self.variant
        self.fast.apply(DEFAULT_FAST_MODE, self.pipe, v.default_guidance)
        size = (v.default_frames, v.height, v.width)
        assert self.speed is not None
        self.speed = warm_up_or_fall_back(self.pipe, self.speed, size, self.log, rung=rung)

    def count_tokens(self, text: str) -> int:
        """T5 tokens of `text` including the end-of-sequence token."""
        return len(self.pipe.tokenizer(text, truncation=False).input_ids)

    def _cut(self, name: str, text: str) -> str:
        """At most checks.PROMPT_CHARS characters, cut at a space (tokenizing 1 MB costs ~10 s).

        The model reads the first max_tokens T5 tokens (226: under ~2,000 characters of text),
        and T5 pieces never cross a space, so those tokens are the same as the whole text's."""
        return checks.cut_text(name, text, self.log) if text else text

    def check(self, req: Request) -> None:
        """Validate a request against this variant; InputError names the input."""
        v = self.variant
        req.prompt = checks.prompt(req.prompt)
        req.seed = checks.seed(req.seed)
        req.fast_mode = check_fast_mode(req.fast_mode)
        req.num_inference_steps = checks.integer(
            "num_inference_steps", req.num_inference_steps, *STEPS_RANGE
        )
        if v.task == "i2v" and req.image is None:
            raise InputError(f"image is required: {v.name} animates an input image")
        if v.task != "i2v" and req.image is not None:
            raise InputError(f"image is not an input of {v.name} (a text-to-video model)")
        if req.video is not None:
            if v.task != "t2v":
                raise InputError(
                    f"video is not an input of {v.name}; video-to-video needs a T2V model"
                )
            checks.choice("video frame count", len(req.video), v.v2v_frames)
            checks.in_range("strength", req.strength, *STRENGTH_RANGE)
            if int(req.num_inference_steps * req.strength) < 1:
                raise InputError(
                    f"strength={req.strength} with num_inference_steps={req.num_inference_steps} "
                    "leaves no denoising step; raise either so steps x strength >= 1"
                )
        else:
            if req.num_frames is None:
                req.num_frames = v.default_frames
            req.num_frames = checks.integer_choice("num_frames", req.num_frames, v.allowed_frames)
        req.prompt = self._cut("prompt", req.prompt)
        req.negative_prompt = self._cut("negative_prompt", req.negative_prompt)
        for name, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
            n = self.count_tokens(text) if text else 0
            if n > v.max_tokens:
                self.log(
                    f"{name} is {n} T5 tokens; {v.name} reads the first {v.max_tokens}, "
                    "the rest is ignored (truncated)"
                )

    def cost(self, req: Request, height: int, width: int) -> GenerationCost:
        """The transformer work `req` asks for, counted from the loaded transformer's config."""
        steps = req.num_inference_steps
        if req.video is not None:  # the schedule's last steps x strength
            steps = min(int(steps * req.strength), steps)
        frames = len(req.video) if req.video is not None else cast(int, req.num_frames)
        pipe = self.pipe  # the video-to-video pipeline shares its modules
        return generation_cost(
            pipe.transformer.config,
            frames,
            height,
            width,
            steps,
            req.guidance_scale,
            spatial_factor=pipe.vae_scale_factor_spatial,
            text_tokens=self.variant.max_tokens,
        )

    def _after_step(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        assert self.step_callback is not None
        self.step_callback()  # may raise to stop the run (a cancel every rank agreed on)
        return tensors

    def generate(self, req: Request) -> Result:
        """Run the pipeline once and return uint8 frames."""
        self.check(req)
        v = self.variant
        self.lora.apply(req.lora_url, req.lora_scale)
        seed = resolve_seed(req.seed, self.log)
        width, height = v.width, v.height
        pipe = self.pipe
        kwargs: dict[str, Any] = dict(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt or None,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
            use_dynamic_cfg=req.use_dynamic_cfg,
            generator=cpu_generator(seed),
            max_sequence_length=v.max_tokens,
            output_type="np",
        )
        if req.video is not None:
            from PIL import Image

            pipe = self.v2v_pipe
            height, width = req.video.shape[1:3]
            kwargs.update(video=[Image.fromarray(f) for f in req.video], strength=req.strength)
            what = f"video-to-video over {len(req.video)} frames (strength {req.strength})"
        else:
            if req.image is not None:
                width, height = req.image.size
                kwargs["image"] = req.image
            kwargs["num_frames"] = req.num_frames
            what = f"{req.num_frames} frames"
        kwargs.update(height=height, width=width)
        if self.step_callback is not None:
            kwargs["callback_on_step_end"] = self._after_step
        set_tiling(pipe.vae, self.plan.vae_tiling, height, width, self.log)
        self.log(
            f"generating {what} at {width}x{height}, "
            f"{req.num_inference_steps} steps, guidance {req.guidance_scale}"
        )
        cost = self.cost(req, height, width)
        self.log(cost.describe())
        t0 = time.perf_counter()
        method = self.fast.apply(req.fast_mode, pipe, req.guidance_scale)
        if not self.decode:
            kwargs["output_type"] = "latent"
        with counting(pipe.transformer) as work, torch.inference_mode():
            frames = pipe(**kwargs).frames[0]
        seconds = time.perf_counter() - t0
        self.log(work.describe(req.fast_mode, method, cost.calls))
        self.log(f"generated in {seconds:.1f}s")
        if not self.decode:
            return Result(np.zeros((0, height, width, 3), np.uint8), seed, seconds)
        if req.video is not None and len(frames) != len(req.video):
            self.log(
                f"video-to-video: {len(req.video)} input frames came out as {len(frames)} (the VAE "
                "decodes an even latent count to 4 frames per latent)"
            )
        return Result(to_uint8_frames(frames), seed, seconds)
