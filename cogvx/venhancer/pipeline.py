"""VEnhancer end to end: uint8 frames + prompt -> enhanced frames (space x1-x8, time up to x9).

Steps as in the original: resize to the target size, repeat each frame for the inserted ones, pad,
VAE-encode, noise the key frames (noise_aug) as the ControlNet hint, noise everything to t = 899,
sample (DPM++ 2M SDE, CFG, frame chunks), tiled temporal VAE decode, crop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, UNet3DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from cogvx.venhancer import arith, text
from cogvx.venhancer.controlnet import VEnhancerUNet, VideoControlNet
from cogvx.venhancer.convert import load_venhancer_unet
from cogvx.venhancer.cost import Cost, run_cost
from cogvx.venhancer.sampler import Conditioning, sample
from cogvx.venhancer.schedule import SOLVER_MODES, T_MAX, Schedule
from cogvx.venhancer.unet import check_latent_size, patch_resampling
from cogvx.venhancer.vae import encode_frames, tiled_decode

S_COND = 8  # the scale condition the released model is always run with (not up_scale)
CHECKPOINT_NAMES = ("venhancer_v2.safetensors", "venhancer_v2.pt", "venhancer_paper.pt")
MAX_STEPS = 50


@dataclass(frozen=True)
class Enhanced:
    """Output frames (T,H,W,3) uint8, their fps, and what was done."""

    frames: np.ndarray
    fps: float
    plan: arith.Plan
    cost: Cost


def check_inputs(
    frames: np.ndarray,
    in_fps: float,
    up_scale: float,
    target_fps: float,
    noise_aug: int,
    solver_mode: str,
    steps: int,
    guidance_scale: float,
    chunk_overlap: int,
) -> None:
    """Raise ValueError naming the first bad input, its value and what is allowed."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4:
        raise ValueError("frames must be a uint8 array of shape (T, H, W, 3)")
    if frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"frames must be (T>=2, H, W, 3); got {frames.shape}")
    checks = [
        ("in_fps", in_fps, 0 < in_fps <= 240, "in (0, 240]"),
        ("up_scale", up_scale, 1 <= up_scale <= 8, "in [1, 8]"),
        ("target_fps", target_fps, 0 < target_fps <= 240, "in (0, 240]"),
        ("noise_aug", noise_aug, int(noise_aug) == noise_aug and 1 <= noise_aug <= 300, "in 1-300"),
        ("solver_mode", solver_mode, solver_mode in SOLVER_MODES, f"one of {SOLVER_MODES}"),
        ("steps", steps, int(steps) == steps and 1 <= steps <= MAX_STEPS, f"in 1-{MAX_STEPS}"),
        ("guidance_scale", guidance_scale, 1 <= guidance_scale <= 20, "in [1, 20]"),
        ("chunk_overlap", chunk_overlap, 1 <= chunk_overlap <= 16, "in 1-16 frames"),
    ]
    for name, value, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{name}={value!r} is not allowed; it must be {allowed}")


class VEnhancer:
    """The loaded model parts and `enhance`, the single call the predictor makes."""

    def __init__(
        self,
        model: VEnhancerUNet,
        vae: AutoencoderKLTemporalDecoder,
        tokenizer: CLIPTokenizer,
        text_encoder: CLIPTextModel,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device, dtype).eval().requires_grad_(False)
        self.vae = vae.to(self.device).eval().requires_grad_(False)  # fp32 as the original
        self.tokenizer = tokenizer
        # transformers' decorated PreTrainedModel.to is typed without its self argument
        self.text_encoder = (
            text_encoder.to(self.device).eval().requires_grad_(False)  # type: ignore[arg-type]
        )
        self.schedule = Schedule()

    @classmethod
    def from_folder(
        cls, path: str | Path, device: str | torch.device = "cuda", dtype=torch.float16
    ) -> VEnhancer:
        """Load `unet/` + `controlnet/` (or an original checkpoint file), `vae/`, `text_encoder/`
        and `tokenizer/` from one folder."""
        root = Path(path)
        parts = ["vae", "text_encoder", "tokenizer"]
        missing = [p for p in parts if not (root / p).is_dir()]
        if missing:
            raise FileNotFoundError(f"VEnhancer folder {root} lacks {missing}")
        if (root / "unet").is_dir() and (root / "controlnet").is_dir():
            unet = UNet3DConditionModel.from_pretrained(root / "unet", torch_dtype=dtype)
            controlnet = VideoControlNet.from_pretrained(root / "controlnet", torch_dtype=dtype)
            model = VEnhancerUNet(patch_resampling(unet), controlnet)
        else:
            found = [root / n for n in CHECKPOINT_NAMES if (root / n).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"VEnhancer folder {root} has neither unet/ + controlnet/ nor one of "
                    f"{CHECKPOINT_NAMES}"
                )
            model = load_venhancer_unet(found[0], dtype=dtype)
        return cls(
            model,
            AutoencoderKLTemporalDecoder.from_pretrained(root / "vae"),
            CLIPTokenizer.from_pretrained(root / "tokenizer"),
            CLIPTextModel.from_pretrained(root / "text_encoder"),
            device,
            dtype,
        )

    def save_folder(self, path: str | Path) -> None:
        """Write the folder layout `from_folder` reads (safetensors)."""
        root = Path(path)
        self.model.unet.save_pretrained(root / "unet")
        self.model.controlnet.save_pretrained(root / "controlnet")
        self.vae.save_pretrained(root / "vae")
        self.text_encoder.save_pretrained(root / "text_encoder")
        self.tokenizer.save_pretrained(root / "tokenizer")

    def _model_fn(self, x, t, y, hint, t_hint, s_cond, mask_cond) -> torch.Tensor:
        return self.model(x.to(self.dtype), t, y, hint, t_hint, s_cond, mask_cond).float()

    def _encode(self, frames: np.ndarray, plan: arith.Plan, gen: torch.Generator) -> torch.Tensor:
        left, right, top, bottom = plan.padding
        video = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2)
        padded = []
        for frame in video:  # one frame at a time: the resized frames can be large
            x = frame[None].float().div(255).sub(0.5).div(0.5)
            x = F.interpolate(x, [plan.target_h, plan.target_w], mode="bilinear")
            padded.append(F.pad(x, (left, right, top, bottom), "constant", 1.0))  # white
        return encode_frames(self.vae, torch.cat(padded), plan.interp + 1, gen)

    @torch.no_grad()
    def enhance(
        self,
        frames: np.ndarray,
        in_fps: float,
        prompt: str = "",
        up_scale: float = 2.0,
        target_fps: float = 16.0,
        noise_aug: int = 200,
        solver_mode: str = "fast",
        steps: int = 15,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        chunk_overlap: int = 8,
        size_policy: str = "original",
        log: Callable[[str], None] = print,
        progress: Callable[[int, int], None] | None = None,
    ) -> Enhanced:
        """Enhance (T,H,W,3) uint8 frames at `in_fps`; see docs/venhancer.md for the levers."""
        check_inputs(
            frames, in_fps, up_scale, target_fps, noise_aug, solver_mode, steps,
            guidance_scale, chunk_overlap,
        )  # fmt: skip
        t, h, w, _ = frames.shape
        plan = arith.make_plan(t, in_fps, h, w, up_scale, target_fps, chunk_overlap, size_policy)
        _, n_frames, lh, lw = plan.latent_shape
        check_latent_size(lh, lw)
        cost = run_cost(plan, solver_mode, steps, guidance_scale)
        if solver_mode == "fast" and steps not in (cost.steps, 15):
            log(f"VEnhancer: 'fast' always runs {cost.steps} steps; steps={steps} is unused")
        log(
            f"VEnhancer: {t} frames {h}x{w} @ {in_fps:g} fps -> {n_frames} frames "
            f"{plan.target_h}x{plan.target_w} @ {plan.out_fps:g} fps; {len(plan.chunks)} chunk(s); "
            f"{cost.describe()}"
        )
        seed = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
        gen = torch.Generator(self.device).manual_seed(seed)
        start = time.perf_counter()
        latents = self._encode(frames, plan, gen)
        t_hint = self.schedule.noise_aug_timestep(noise_aug)
        hint = self.schedule.diffuse(
            latents[:, :, :: plan.interp + 1],
            t_hint,
            torch.randn(latents[:, :, :: plan.interp + 1].shape, generator=gen, device=self.device),
        )
        noised = self.schedule.diffuse(
            latents, T_MAX, torch.randn(latents.shape, generator=gen, device=self.device)
        )
        ids = text.encode_text(
            self.tokenizer, self.text_encoder, [text.full_prompt(prompt), text.NEGATIVE_PROMPT]
        ).to(self.dtype)
        dev = self.device
        cond = Conditioning(
            y=ids[:1],
            negative_y=ids[1:],
            hint=hint.to(self.dtype),
            t_hint=torch.tensor([t_hint], device=dev),
            s_cond=torch.tensor([S_COND], device=dev),
            mask_cond=torch.tensor([plan.mask_cond], device=dev),
        )
        log(f"VEnhancer: encoded in {time.perf_counter() - start:.1f} s (seed {seed})")
        z = sample(
            self._model_fn,
            noised,
            cond,
            self.schedule,
            solver_mode,
            steps,
            guidance_scale,
            chunks=plan.chunks,
            noise_fn=lambda i, x: torch.randn(x.shape, generator=gen, device=x.device),
            progress=progress,
        )
        log(f"VEnhancer: sampled in {time.perf_counter() - start:.1f} s")
        video = tiled_decode(self.vae, z)[0]
        left, _, top, _ = plan.padding
        video = video[:, :, top : top + plan.target_h, left : left + plan.target_w]
        out = video.mul(0.5).add(0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
        log(f"VEnhancer: decoded in {time.perf_counter() - start:.1f} s")
        return Enhanced(out.permute(1, 2, 3, 0).cpu().numpy(), plan.out_fps, plan, cost)
