"""The variants table: one row per CogVideoX model the repository serves."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

SEED_TARBALL_BASE = "https://weights.replicate.delivery/default/THUDM/CogVideo"
# Every released diffusers folder (THUDM/CogVideoX-2b, -5b, -5b-I2V, 1.5-5B, 1.5-5B-I2V) ships
# this scheduler; Variant.scheduler is the one THUDM's cli_demo runs (the loader swaps it in).
RELEASE_SCHEDULER = "CogVideoXDDIMScheduler"
FOLDER_OVERRIDES = "cogvx.json"  # optional file in a weights folder: {"height": .., "width": ..}
OVERRIDE_KEYS = ("height", "width", "fps", "min_side", "max_side")


# Parameters of the released components, counted on the meta device (`python -m
# cogvx.cogvideox.released`; tests/cogvideox/test_released_configs.py holds these to that count).
TEXT_ENCODER_PARAMS = 4_762_310_656  # google/t5-v1_1-xxl encoder, shared by every release
VAE_PARAMS = 215_583_907  # AutoencoderKLCogVideoX, the same shapes in every release
TRANSFORMER_PARAMS = {
    "t2v-2b": 1_693_783_872,
    "t2v-5b": 5_570_283_072,
    "i2v-5b": 5_570_479_680,
    "t2v-1.5": 5_570_676_352,
    "i2v-1.5": 5_571_594_880,
}


@dataclass(frozen=True)
class MemoryNeed:
    """Peak GPU memory (GiB) of one generation under each offload mode, VAE tiling on.

    Weights are the counted parameters at 2 bytes (bf16/fp16). `activation_gib` is the working
    memory besides weights at the native size: THUDM's published minimum with sequential CPU
    offload, VAE tiling and slicing (2b "from 4 GB", 5b "from 5 GB", 1.5 "from 10 GB"), where
    almost no weights stay on the card. Model offload holds one component at a time.
    """

    transformer_params: int
    activation_gib: float
    text_encoder_params: int = TEXT_ENCODER_PARAMS
    vae_params: int = VAE_PARAMS
    bytes_per_param: int = 2

    def weights_gib(self) -> dict[str, float]:
        """GiB of each component's weights."""
        counts = {
            "transformer": self.transformer_params,
            "text_encoder": self.text_encoder_params,
            "vae": self.vae_params,
        }
        return {k: n * self.bytes_per_param / 2**30 for k, n in counts.items()}

    @property
    def no_offload(self) -> float:
        """Everything on the card."""
        return sum(self.weights_gib().values()) + self.activation_gib

    @property
    def model_offload(self) -> float:
        """The largest component on the card, the others in CPU memory."""
        return max(self.weights_gib().values()) + self.activation_gib

    @property
    def sequential_offload(self) -> float:
        """Layers streamed to the card one at a time."""
        return self.activation_gib

    def describe(self) -> str:
        """Where the numbers come from, for the setup log."""
        w = self.weights_gib()
        return (
            f"weights {w['transformer']:.1f} transformer + {w['text_encoder']:.1f} T5 + "
            f"{w['vae']:.1f} VAE GiB, activations ~{self.activation_gib:g} GiB"
        )


def _memory(model: str, activation_gib: float) -> MemoryNeed:
    return MemoryNeed(TRANSFORMER_PARAMS[model], activation_gib)


@dataclass(frozen=True)
class Variant:
    """Everything that differs between models: data, not branches."""

    name: str
    task: str  # "t2v" | "i2v"
    hf_repo: str
    pipeline: str  # diffusers pipeline class name
    weights_url: str | None  # public tarball of the diffusers folder, if one is known
    dtype: str  # torch dtype name the model was trained in
    generation: str  # "1.0" | "1.5"
    frame_step: int  # num_frames must be frame_step * N + 1
    min_frames: int
    max_frames: int
    default_frames: int
    fps: int  # native frame rate
    height: int
    width: int
    max_tokens: int  # T5 prompt length the transformer was trained with
    memory: MemoryNeed
    scheduler: str = "CogVideoXDPMScheduler"  # the class THUDM runs it with (cli_demo)
    snr_shift_scale: float = 1.0
    vae_scaling_factor: float = 0.7
    default_guidance: float = 6.0
    default_steps: int = 50
    dynamic_cfg: bool = True  # THUDM: cosine CFG with DPM; off for 2b's DDIM
    # Image-to-video size rule: None = fixed height x width; else the short side is min_side and
    # the long side follows the image's aspect ratio up to max_side, in multiples of size_multiple.
    min_side: int | None = None
    max_side: int | None = None
    size_multiple: int = 16
    patch_t: int = 1  # latent frames per temporal patch (1.5: 2)

    @property
    def allowed_frames(self) -> list[int]:
        """Frame counts the model accepts, ascending."""
        return list(range(self.min_frames, self.max_frames + 1, self.frame_step))

    @property
    def v2v_frames(self) -> list[int]:
        """Input-video frame counts video-to-video accepts: whole temporal patches of latents.

        The text-to-video pipeline pads an odd latent count for 1.5 (81 frames run as 22 latents,
        85 frames) and drops the pad; the video-to-video pipeline cannot pad, so it takes 85.
        """
        out = []
        for n in self.allowed_frames:
            latents = (n - 1) // 4 + 1
            latents += -latents % self.patch_t
            out.append((latents - 1) * 4 + 1)
        return out

    def with_folder_overrides(self, folder: str | Path) -> Variant:
        """Apply the folder's `cogvx.json` (native size of a fine-tune or of a tiny test model)."""
        path = Path(folder) / FOLDER_OVERRIDES
        if not path.is_file():
            return self
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(OVERRIDE_KEYS))
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; allowed: {list(OVERRIDE_KEYS)}")
        new: dict[str, Any] = {k: int(v) for k, v in data.items()}
        if self.min_side and "min_side" not in new and ({"height", "width"} & set(new)):
            # A smaller native size (tiny test model, fine-tune) scales the size rule with it.
            h, w = new.get("height", self.height), new.get("width", self.width)
            ratio = min(h, w) / min(self.height, self.width)
            m = self.size_multiple
            new["min_side"] = max(m, round(self.min_side * ratio / m) * m)
            if "max_side" not in new:
                # the released size rule sets min_side and max_side together
                max_side = cast(int, self.max_side)
                new["max_side"] = max(new["min_side"], int(max_side * ratio) // m * m)
        return replace(self, **new)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            name="t2v-2b",
            task="t2v",
            hf_repo="THUDM/CogVideoX-2b",
            pipeline="CogVideoXPipeline",
            weights_url=None,
            dtype="float16",
            generation="1.0",
            frame_step=8,
            min_frames=9,
            max_frames=49,
            default_frames=49,
            fps=8,
            height=480,
            width=720,
            max_tokens=226,
            memory=_memory("t2v-2b", 4.0),
            scheduler="CogVideoXDDIMScheduler",
            dynamic_cfg=False,
            snr_shift_scale=3.0,
            vae_scaling_factor=1.15258426,
        ),
        Variant(
            name="t2v-5b",
            task="t2v",
            hf_repo="THUDM/CogVideoX-5b",
            pipeline="CogVideoXPipeline",
            weights_url=f"{SEED_TARBALL_BASE}/model_cache.tar",
            dtype="bfloat16",
            generation="1.0",
            frame_step=8,
            min_frames=9,
            max_frames=49,
            default_frames=49,
            fps=8,
            height=480,
            width=720,
            max_tokens=226,
            memory=_memory("t2v-5b", 5.0),
        ),
        Variant(
            name="t2v-1.5",
            task="t2v",
            hf_repo="THUDM/CogVideoX1.5-5B",
            pipeline="CogVideoXPipeline",
            weights_url=None,
            dtype="bfloat16",
            generation="1.5",
            frame_step=16,
            min_frames=17,
            max_frames=161,
            default_frames=81,
            fps=16,
            height=768,
            width=1360,
            max_tokens=226,  # the released transformer config (SAT trained on 224): see README
            memory=_memory("t2v-1.5", 10.0),
            patch_t=2,
        ),
        Variant(
            name="i2v-5b",
            task="i2v",
            hf_repo="THUDM/CogVideoX-5b-I2V",
            pipeline="CogVideoXImageToVideoPipeline",
            weights_url=f"{SEED_TARBALL_BASE}/model_cache_i2v.tar",
            dtype="bfloat16",
            generation="1.0",
            frame_step=8,
            min_frames=49,
            max_frames=49,
            default_frames=49,
            fps=8,
            height=480,
            width=720,
            max_tokens=226,
            memory=_memory("i2v-5b", 5.0),
        ),
        Variant(
            name="i2v-1.5",
            task="i2v",
            hf_repo="THUDM/CogVideoX1.5-5B-I2V",
            pipeline="CogVideoXImageToVideoPipeline",
            weights_url=None,
            dtype="bfloat16",
            generation="1.5",
            frame_step=16,
            min_frames=17,
            max_frames=161,
            default_frames=81,
            fps=16,
            height=768,
            width=1360,
            max_tokens=226,  # the released transformer config (SAT trained on 224): see README
            memory=_memory("i2v-1.5", 10.0),
            patch_t=2,
            min_side=768,  # THUDM: min(W, H) = 768, 768 <= max(W, H) <= 1360, multiples of 16
            max_side=1360,
        ),
    ]
}


def scheduler_config(v: Variant) -> dict:
    """The released scheduler config: v-prediction, zero terminal SNR, trailing timesteps."""
    return dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        steps_offset=0,
        snr_shift_scale=v.snr_shift_scale,
        timestep_spacing="trailing",
    )


def get_variant(name: str) -> Variant:
    """Look a variant up by name, with an error listing the known names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(VARIANTS)}") from None


@dataclass(frozen=True)
class Deployment:
    """One served model: its Cog config, runner class and weights (a row of the README table).

    `model` names the variant for CogVideoX rows, else the model ("caption", "enhance"); it is
    also the folder under the weights cache."""

    config: str
    run: str
    model: str
    hf_repo: str
    weights_url: str | None  # default COG_WEIGHTS; None: the deployment must provide weights


def _video(config: str, run: str, name: str) -> Deployment:
    v = VARIANTS[name]
    return Deployment(config, run, name, v.hf_repo, v.weights_url)


DEPLOYMENTS: tuple[Deployment, ...] = (
    _video("cog.yaml", "predict_t2v/predict.py:Runner", "t2v-5b"),
    _video("cog.t2v-2b.yaml", "predict_t2v/predict.py:Runner2b", "t2v-2b"),
    _video("cog.t2v-1.5.yaml", "predict_t2v/predict.py:Runner15", "t2v-1.5"),
    _video("cog.i2v.yaml", "predict_i2v/predict.py:Runner", "i2v-5b"),
    _video("cog.i2v-1.5.yaml", "predict_i2v/predict.py:Runner15", "i2v-1.5"),
    Deployment(
        "cog.caption.yaml",
        "predict_caption/predict.py:Runner",
        "caption",
        "THUDM/cogvlm2-llama3-caption",
        None,  # no public tarball is known
    ),
    Deployment(
        "cog.caption-batch.yaml",  # the same model, many clips per prediction (JSONL out)
        "predict_caption/predict.py:BatchRunner",
        "caption",
        "THUDM/cogvlm2-llama3-caption",
        None,
    ),
    Deployment(
        "cog.enhance.yaml",
        "predict_enhance/predict.py:Runner",
        "enhance",
        "jwhejwhe/VEnhancer",
        None,  # VEnhancer's checkpoint is only a .pt: tools/build_enhance_weights.py builds one
    ),
)


def get_deployment(model: str) -> Deployment:
    """The row serving `model` (a variant name, "caption" or "enhance")."""
    for d in DEPLOYMENTS:
        if d.model == model:
            return d
    raise ValueError(f"unknown model {model!r}; known: {[d.model for d in DEPLOYMENTS]}")
