"""CogVLM2-Caption video captioning runner: Inputs only; the work is in cogvx.services.caption."""

from typing import Optional

from cog import BaseRunner, Input, Path

from cogvx.net.inputs import request_file
from cogvx.services.caption import CaptionService
from cogvx.services.caption_batch import caption_batch_file


class Inputs:
    """Inputs both caption runners share (the Go CLI resolves `Inputs.x` statically)."""

    prompt = Input(
        description="What to ask about the video.",
        default="Please describe this video in detail.",
    )
    strategy = Input(
        description="Frame choice and prompt template: 'chat' = one frame per second, up to 24 (the model's captioning mode); 'base' = 24 frames evenly over the first 60 s.",  # noqa: E501
        choices=["chat", "base"],
        default="chat",
    )
    max_new_tokens = Input(
        description="Longest caption, in tokens (generation stops earlier at the end token).",
        default=2048,
        ge=1,
        le=4096,
    )


class Runner(BaseRunner):
    """Describe a video in text with THUDM/cogvlm2-llama3-caption (24 frames, 224 px)."""

    def setup(self, weights: Optional[str] = None) -> None:
        """Fetch the weights (COG_WEIGHTS: tarball URL or folder) and load the model."""
        self.service = CaptionService(weights)

    def run(
        self,
        video: Path = Input(
            description="Video to caption: MP4, WebM, MOV or MKV (H.264, HEVC, VP9, AV1). Only the first 60 s can be seen; frames above 4K are downscaled."  # noqa: E501
        ),
        prompt: str = Inputs.prompt,
        strategy: str = Inputs.strategy,
        max_new_tokens: int = Inputs.max_new_tokens,
        temperature: float = Input(
            description="0 = greedy (deterministic, as the original demo); above 0 samples.",
            default=0.0,
            ge=0.0,
            le=2.0,
        ),
        top_p: float = Input(
            description="Nucleus sampling: keep the smallest set of tokens with this much probability (used when temperature > 0).",  # noqa: E501
            default=1.0,
            ge=0.01,
            le=1.0,
        ),
        seed: Optional[int] = Input(
            description="Random seed for sampling (temperature > 0), 0 to 4294967295 (2^32 - 1). Leave blank to randomize; the seed used is logged.",  # noqa: E501
            default=None,
            ge=0,
            le=4294967295,
        ),
    ) -> str:
        return self.service.run(
            video=request_file("video", video),
            prompt=prompt,
            strategy=strategy,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
        )


class BatchRunner(BaseRunner):
    """Caption many clips per prediction with THUDM/cogvlm2-llama3-caption (greedy, batched)."""

    def setup(self, weights: Optional[str] = None) -> None:
        """Fetch the weights (COG_WEIGHTS: tarball URL or folder) and load the model."""
        self.service = CaptionService(weights)

    def run(
        self,
        videos: Path = Input(
            description="The clips: a .zip or .tar of videos, or a text file with one http(s) URL per line (up to 10000 clips, 2 GiB each). Returns a JSONL file, one line per clip in input order: path, caption, frames_used, duration, model, prompt, strategy, seconds, error (a clip that cannot be read has its error and no caption; the others go on).",  # noqa: E501
        ),
        prompt: str = Inputs.prompt,
        strategy: str = Inputs.strategy,
        max_new_tokens: int = Inputs.max_new_tokens,
        batch_size: int = Input(
            description="Clips per forward pass; 0 = as many as fit in the GPU's free memory (at most 16). Greedy decoding: the same captions as one clip at a time.",  # noqa: E501
            default=0,
            ge=0,
            le=16,
        ),
    ) -> Path:
        source = request_file("videos", videos)
        assert source is not None  # a required input
        return Path(
            caption_batch_file(
                self.service, source, prompt, strategy, max_new_tokens, batch_size or None
            )
        )
