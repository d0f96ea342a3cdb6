"""Video enhancement runner (VEnhancer, or Real-ESRGAN + RIFE): Inputs only; see cogvx.enhance."""

from typing import Optional

from cog import BaseRunner, Input, Path

from cogvx.net.inputs import request_file
from cogvx.services.enhance import EnhanceService


class Runner(BaseRunner):
    """Enhance a video in space (up_scale) and time (target_fps): VEnhancer or the fast path."""

    def setup(self, weights: Optional[str] = None) -> None:
        """Fetch the weights (COG_WEIGHTS: tarball URL or folder) and load the models."""
        self.service = EnhanceService(weights)

    def run(
        self,
        video: Path = Input(
            description="Video to enhance: MP4, WebM, MOV or MKV (H.264, HEVC, VP9, AV1), 2-300 frames, up to 16 MP a frame. Every frame is used at the video's own frame rate. Audio is dropped: the output has none."  # noqa: E501
        ),
        method: str = Input(
            description="venhancer: diffusion refinement (VEnhancer v2; adds detail, regenerates texture, slow). fast: Real-ESRGAN upscaling + RIFE frame interpolation (as CogVideoX's demo; seconds, no new detail). The prompt and the diffusion settings below apply to venhancer only.",  # noqa: E501
            choices=["venhancer", "fast"],
            default="venhancer",
        ),
        prompt: str = Input(
            description="venhancer: what the video shows. VEnhancer's text encoder reads 77 CLIP tokens, including a quality suffix appended to your text; longer text is cut and the logs say so.",  # noqa: E501
            default="",
        ),
        up_scale: float = Input(
            description="Spatial scale. Cost grows with the output area. venhancer with size_policy=original keeps every output between 1.5x 720p and 1152x2048 in area, so this is often overridden (the logs say the size used). fast: at most the Real-ESRGAN model's factor (x4); 1 skips upscaling.",  # noqa: E501
            default=2.0,
            ge=1.0,
            le=8.0,
        ),
        target_fps: Optional[float] = Input(
            description="Output frame rate; blank = twice the input's (8 -> 16 fps). Must not be below the input's. venhancer inserts round(target/input) - 1 frames between neighbours (at most 8); fast doubles 1-4 times (x2, x4, x8, x16). Cost grows with the output frames; the logs say the rate reached.",  # noqa: E501
            default=None,
            ge=1.0,
            le=240.0,
        ),
        size_policy: str = Input(
            description="venhancer: original = the authors' size rule (pads small frames to 720x1280: the sizes it was trained at); exact = up_scale exactly, padded only to the nearest size the model takes (much cheaper for small videos, off the training sizes).",  # noqa: E501
            choices=["original", "exact"],
            default="original",
        ),
        noise_aug: int = Input(
            description="venhancer: noise added to the input frames the model follows: higher = freer refinement, lower = closer to the input.",  # noqa: E501
            default=200,
            ge=1,
            le=300,
        ),
        solver_mode: str = Input(
            description="venhancer: fast = the authors' 14-step schedule (steps is unused); normal = `steps` evenly spaced steps.",  # noqa: E501
            choices=["fast", "normal"],
            default="fast",
        ),
        steps: int = Input(
            description="venhancer, solver_mode=normal: sampling steps; cost is proportional.",
            default=15,
            ge=1,
            le=50,
        ),
        guidance_scale: float = Input(
            description="venhancer: classifier-free guidance towards the prompt (rescale 0.2). 1 turns it off and halves the cost.",  # noqa: E501
            default=7.5,
            ge=1.0,
            le=20.0,
        ),
        chunk_overlap: int = Input(
            description="venhancer: frames shared by neighbouring ~31-frame sampling windows. 16 is the authors' setting (re-computes about half of every window); 8 about a quarter; 1 costs least but may show seams.",  # noqa: E501
            default=8,
            ge=1,
            le=16,
        ),
        precision: str = Input(
            description="venhancer: UNet + ControlNet precision on GPU (the VAE and text encoder stay fp32). fp16 as the authors ran it; bf16 has more range, less precision. Switching reloads the weights (seconds).",  # noqa: E501
            choices=["fp16", "bf16"],
            default="fp16",
        ),
        seed: Optional[int] = Input(
            description="venhancer: random seed, 0 to 4294967295 (2^32 - 1). Leave blank to randomize; the seed used is logged. (fast is deterministic.)",  # noqa: E501
            default=None,
            ge=0,
            le=4294967295,
        ),
        output_format: str = Input(
            description="mp4 (H.264, plays everywhere), webm (VP9) or gif.",
            choices=["mp4", "webm", "gif"],
            default="mp4",
        ),
        output_quality: int = Input(
            description="Encoder quality 1-100 (mp4/webm; 80 = CRF 18 for H.264). GIF ignores it.",
            default=80,
            ge=1,
            le=100,
        ),
    ) -> Path:
        return Path(
            self.service.run(
                video=request_file("video", video),
                method=method,
                prompt=prompt,
                up_scale=up_scale,
                target_fps=target_fps,
                size_policy=size_policy,
                noise_aug=noise_aug,
                solver_mode=solver_mode,
                steps=steps,
                guidance_scale=guidance_scale,
                chunk_overlap=chunk_overlap,
                precision=precision,
                seed=seed,
                output_format=output_format,
                output_quality=output_quality,
                record_metric=self.record_metric,
            )
        )
