"""CogVideoX image-to-video runners: one class per model, Inputs only; the work is in cogvx."""

from typing import Optional

from cog import BaseRunner, Input, Path

from cogvx.net.inputs import request_file
from cogvx.services.video import VideoService


class Inputs:
    """Inputs both image-to-video models share (the Go CLI resolves `Inputs.x` statically)."""

    image = Input(
        description="The first frame: PNG, JPEG, WebP, GIF (first frame), BMP or TIFF, up to 80 MP. Any mode is converted to 8-bit RGB (transparency on white); EXIF rotation is applied."  # noqa: E501
    )
    prompt = Input(
        description="What happens in the video. Up to 226 T5 tokens are read; longer prompts are truncated and the logs say so."  # noqa: E501
    )
    negative_prompt = Input(
        description="What the video should not show (leave empty for none).", default=""
    )
    num_inference_steps = Input(
        description="Denoising steps: fewer is faster, 50 is the reference quality.",
        default=50,
        ge=1,
        le=100,
    )
    guidance_scale = Input(
        description="Classifier-free guidance: how closely to follow the prompt.",
        default=6.0,
        ge=0.0,
        le=20.0,
    )
    use_dynamic_cfg = Input(
        description="Cosine guidance schedule over the steps (recommended by THUDM for 5b / 1.5).",
        default=True,
    )
    seed = Input(
        description="Random seed, 0 to 4294967295 (2^32 - 1). Leave blank to randomize; the seed used is logged.",  # noqa: E501
        default=None,
        ge=0,
        le=4294967295,
    )
    output_format = Input(
        description="mp4 (H.264, plays everywhere), webm (VP9) or gif.",
        choices=["mp4", "webm", "gif"],
        default="mp4",
    )
    output_quality = Input(
        description="Encoder quality 1-100 (mp4/webm; 80 = CRF 18 for H.264). GIF ignores it.",
        default=80,
        ge=1,
        le=100,
    )
    interpolate = Input(
        description="RIFE frame interpolation: a frame between every two (49 -> 97 frames), and the file plays at twice `fps` with the same duration (8 -> 16 fps). Needs the fast-path weights in this deployment (COGVX_FAST_WEIGHTS, see the README); fails otherwise.",  # noqa: E501
        default=False,
    )
    upscale = Input(
        description="Real-ESRGAN upscaling of the output (x2 or x4; 1 = off), as CogVideoX's demo. Cost grows with the output area. Needs the fast-path weights in this deployment (COGVX_FAST_WEIGHTS, see the README); fails otherwise.",  # noqa: E501
        choices=[1, 2, 4],
        default=1,
    )
    lora_url = Input(
        description="Optional LoRA (.safetensors only): an https URL of the file or of a .tar holding one, a Hugging Face repo as owner/repo (its pytorch_lora_weights.safetensors or its one .safetensors), owner/repo/file.safetensors or a huggingface.co page of either, a replicate.com model URL, or a civitai.com download link. Downloads are cached; leave blank for the base model.",  # noqa: E501
        default=None,
    )
    lora_scale = Input(
        description="LoRA strength: 1 = the file's alpha/rank (a file that stores no alpha, as THUDM's trainer saves them, loads at alpha = rank, as in diffusers), 0 = the base model.",  # noqa: E501
        default=1.0,
        ge=-1.0,
        le=3.0,
    )
    fast_mode = Input(
        description="Step caching: off = the reference computation; balanced = FasterCache (attention and the unconditional pass reused between steps; its paper, which evaluates CogVideoX, reports quality comparable to the reference); fast = First Block Cache (skips whole steps whose first block barely changed: faster, visible changes possible). The logs say how much was computed.",  # noqa: E501
        choices=["off", "balanced", "fast"],
        default="balanced",
    )
    extend_prompt = Input(
        description="Rewrite the prompt with an instruct LLM into the long, concrete caption style CogVideoX was trained on (subject, motion, setting, light, camera; cut to 226 tokens) before generating. The extended prompt is logged, so it is returned in the prediction's logs. Greedy: the same prompt gives the same extension. Needs the deployment to load a prompt LLM (COGVX_PROMPT_WEIGHTS, see the README); fails otherwise.",  # noqa: E501
        default=False,
    )


class I2VRunner(BaseRunner):
    """Shared setup and run for the image-to-video models."""

    MODEL = "i2v-5b"

    def setup(self, weights: Optional[str] = None) -> None:
        """Fetch the weights (COG_WEIGHTS: tarball URL or folder) and load the pipeline."""
        self.service = VideoService(self.MODEL, weights)

    def _run(self, inputs: dict) -> Path:
        inputs.pop("self", None)
        inputs["image"] = request_file("image", inputs["image"])
        return Path(self.service.run(**inputs, record_metric=self.record_metric))


class Runner(I2VRunner):
    """CogVideoX-5b-I2V: animates an image into 49 frames at 720x480 (8 fps)."""

    MODEL = "i2v-5b"

    def run(
        self,
        image: Path = Inputs.image,
        prompt: str = Inputs.prompt,
        negative_prompt: str = Inputs.negative_prompt,
        image_fit: str = Input(
            description="How the image becomes 720x480 (the only size this model makes): crop = fill and cut the overflow (centred), pad = fit inside black bars, stretch = distort. Portrait images are fitted too; the logs say how.",  # noqa: E501
            choices=["crop", "pad", "stretch"],
            default="crop",
        ),
        num_inference_steps: int = Inputs.num_inference_steps,
        guidance_scale: float = Inputs.guidance_scale,
        use_dynamic_cfg: bool = Inputs.use_dynamic_cfg,
        seed: Optional[int] = Inputs.seed,
        fps: int = Input(
            description="Frame rate of the output file (49 frames: 6 s at 8 fps).",
            default=8,
            ge=1,
            le=60,
        ),
        output_format: str = Inputs.output_format,
        output_quality: int = Inputs.output_quality,
        interpolate: bool = Inputs.interpolate,
        upscale: int = Inputs.upscale,
        lora_url: Optional[str] = Inputs.lora_url,
        lora_scale: float = Inputs.lora_scale,
        fast_mode: str = Inputs.fast_mode,
        extend_prompt: bool = Inputs.extend_prompt,
    ) -> Path:
        return self._run(locals())


class Runner15(I2VRunner):
    """CogVideoX1.5-5B-I2V: size from the image's aspect ratio (short side 768), 16 fps."""

    MODEL = "i2v-1.5"

    def run(
        self,
        image: Path = Inputs.image,
        prompt: str = Inputs.prompt,
        negative_prompt: str = Inputs.negative_prompt,
        image_fit: str = Input(
            description="The output keeps the image's orientation: short side 768, long side from its aspect ratio in multiples of 16, at most 1360. For images wider than 1360:768 (16:9): crop = cut the overflow (centred), pad = black bars, stretch = distort.",  # noqa: E501
            choices=["crop", "pad", "stretch"],
            default="crop",
        ),
        num_frames: int = Input(
            description="Frames to generate (16N+1); 81 frames = 5 s, 161 = 10 s at 16 fps.",
            choices=[17, 33, 49, 65, 81, 97, 113, 129, 145, 161],
            default=81,
        ),
        num_inference_steps: int = Inputs.num_inference_steps,
        guidance_scale: float = Inputs.guidance_scale,
        use_dynamic_cfg: bool = Inputs.use_dynamic_cfg,
        seed: Optional[int] = Inputs.seed,
        fps: int = Input(description="Frame rate of the output file.", default=16, ge=1, le=60),
        output_format: str = Inputs.output_format,
        output_quality: int = Inputs.output_quality,
        interpolate: bool = Inputs.interpolate,
        upscale: int = Inputs.upscale,
        lora_url: Optional[str] = Inputs.lora_url,
        lora_scale: float = Inputs.lora_scale,
        fast_mode: str = Inputs.fast_mode,
        extend_prompt: bool = Inputs.extend_prompt,
    ) -> Path:
        return self._run(locals())
