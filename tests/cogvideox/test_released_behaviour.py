"""How the released checkpoints are run: THUDM's scheduler swap, the 1.5 prompt length, and VAE
tiling that never changes the frame size (issue "Real-model fidelity")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline

from cogvx.cogvideox.generate import Request, VideoModel
from cogvx.cogvideox.tiling import decoded_size, encoded_size, tiled_length, tiling_fits
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline, save_tiny_weights
from cogvx.gpu import MemoryPlan
from cogvx.models import RELEASE_SCHEDULER, get_variant
from cogvx.video import to_uint8_frames

STEPS, FRAMES, SEED = 4, 9, 11


@pytest.fixture(scope="module")
def folder_5b(tmp_path_factory):
    return save_tiny_weights("t2v-5b", tmp_path_factory.mktemp("t2v-5b"))


def _load(model, folder, tmp_path, monkeypatch):
    monkeypatch.setenv("COGVX_WEIGHTS_CACHE", str(tmp_path / "cache"))
    logs: list[str] = []
    return VideoModel.load(model, str(folder), log=logs.append), logs


def _stock_kwargs(prompt="a cat on the dog"):
    return dict(
        prompt=prompt, negative_prompt=None, num_inference_steps=STEPS, guidance_scale=6.0,
        use_dynamic_cfg=True, num_frames=FRAMES, height=TINY_HEIGHT, width=TINY_WIDTH,
        max_sequence_length=226, generator=torch.Generator("cpu").manual_seed(SEED),
    )  # fmt: skip


def test_tiny_folders_ship_what_the_releases_ship(folder_5b):
    stock = CogVideoXPipeline.from_pretrained(folder_5b)
    assert type(stock.scheduler).__name__ == RELEASE_SCHEDULER == "CogVideoXDDIMScheduler"
    assert stock.scheduler.config.timestep_spacing == "trailing"


@pytest.mark.parametrize(
    ("model", "want"),
    [("t2v-5b", CogVideoXDPMScheduler), ("t2v-2b", CogVideoXDDIMScheduler),
     ("i2v-5b", CogVideoXDPMScheduler), ("t2v-1.5", CogVideoXDPMScheduler)],
)  # fmt: skip
def test_the_loader_runs_the_variants_scheduler(model, want, tmp_path, monkeypatch):
    folder = save_tiny_weights(model, tmp_path / "w")
    loaded, logs = _load(model, folder, tmp_path, monkeypatch)
    sched = loaded.pipe.scheduler
    assert type(sched) is want and sched.config.timestep_spacing == "trailing"
    grads = [p.requires_grad for m in loaded.pipe.components.values()
             if isinstance(m, torch.nn.Module) for p in m.parameters()]  # fmt: skip
    assert grads and not any(grads)  # frozen from the start, as a LoRA's unload leaves them
    assert sched.config.snr_shift_scale == get_variant(model).snr_shift_scale  # config kept
    line = next(m for m in logs if m.startswith("scheduler:"))
    if want is CogVideoXDPMScheduler:
        assert line == (
            "scheduler: CogVideoXDPMScheduler, trailing (the folder ships CogVideoXDDIMScheduler)"
        )
    else:
        assert line == "scheduler: CogVideoXDDIMScheduler, trailing"


def test_frames_equal_stock_diffusers_with_thudms_swap(folder_5b, tmp_path, monkeypatch):
    loaded, _ = _load("t2v-5b", folder_5b, tmp_path, monkeypatch)
    ours = loaded.generate(
        Request(
            prompt="a cat on the dog",
            negative_prompt="",
            num_frames=FRAMES,
            num_inference_steps=STEPS,
            guidance_scale=6.0,
            use_dynamic_cfg=True,
            seed=SEED,
        )  # fmt: skip
    ).frames
    stock = CogVideoXPipeline.from_pretrained(folder_5b)
    stock.scheduler = CogVideoXDPMScheduler.from_config(
        stock.scheduler.config, timestep_spacing="trailing"
    )  # THUDM's inference/cli_demo.py for 5b
    with torch.inference_mode():
        want = stock(**_stock_kwargs(), output_type="np").frames[0]
        dpm = stock(**_stock_kwargs(), output_type="latent").frames
        stock.scheduler = CogVideoXDDIMScheduler.from_config(stock.scheduler.config)
        ddim = stock(**_stock_kwargs(), output_type="latent").frames
    assert np.array_equal(ours, to_uint8_frames(want))
    assert not torch.equal(dpm, ddim)  # the swap changes the computation, not just the name


def test_prompt_length_is_226_tokens_for_every_model():
    for name in ("t2v-2b", "t2v-5b", "t2v-1.5", "i2v-5b", "i2v-1.5"):
        v = get_variant(name)
        assert v.max_tokens == 226, name
        pipe = build_tiny_pipeline(name)
        assert pipe.transformer.config.max_text_seq_length == 226  # as the release configs
        assert pipe.tokenizer.model_max_length == 226


# Sizes diffusers 0.42.1's AutoencoderKLCogVideoX made with tiling on, measured once (tile
# 240x360 px = the released VAE's sample_size / 2, overlap 1/6 and 1/5): every released size
# keeps its shape. The tiny VAE's 16x24 tile does not.
RELEASED_TILE = dict(
    tile_sample_min_height=240, tile_sample_min_width=360, tile_latent_min_height=30,
    tile_latent_min_width=45, tile_overlap_factor_height=1 / 6, tile_overlap_factor_width=1 / 5,
)  # fmt: skip
MEASURED = [  # (vae, height, width, encoded latents, decoded pixels)
    ("tiny", 32, 48, (4, 7), (50, 56)),
    ("tiny", 48, 32, (7, 4), (78, 36)),
    ("tiny", 16, 16, (2, 2), (16, 16)),
    ("released", 480, 720, (60, 90), (480, 720)),
    ("released", 768, 1360, (96, 170), (768, 1360)),
    ("released", 1360, 768, (170, 96), (1360, 768)),
    ("released", 768, 1024, (96, 128), (768, 1024)),
    ("released", 256, 256, (32, 32), (256, 256)),
]


class _Tile:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize(("vae", "h", "w", "enc", "dec"), MEASURED)
def test_tile_arithmetic_matches_diffusers(vae, h, w, enc, dec):
    tiles = build_tiny_pipeline("t2v-5b").vae if vae == "tiny" else _Tile(**RELEASED_TILE)
    assert encoded_size(tiles, h, w) == enc
    assert decoded_size(tiles, h // 8, w // 8) == dec
    assert tiling_fits(tiles, h, w) == (enc == (h // 8, w // 8) and dec == (h, w))


def test_tiled_length_by_hand():
    # 4 latents, tiles of 2 stepped by 1, pieces of 16 px cut to 14: 14 + 14 + 14 + 8 = 50
    assert tiled_length(4, 2, 1 / 6, 16, 8) == 50
    with pytest.raises(ValueError, match="no stride"):
        tiled_length(4, 1, 0.5, 8, 8)


def test_tiling_never_changes_the_output_size(folder_5b):
    """The GPU plan's tiling on CPU: the tiny size keeps its frames, the log says why."""
    pipe = build_tiny_pipeline("t2v-5b")
    v = get_variant("t2v-5b").with_folder_overrides(folder_5b)
    z = torch.randn(1, 16, 3, TINY_HEIGHT // 8, TINY_WIDTH // 8)
    pipe.vae.enable_tiling()
    with torch.no_grad():  # what plain enable_tiling() would do to this size
        assert pipe.vae.decode(z).sample.shape[-2:] == (50, 56)
    logs: list[str] = []
    plan = MemoryPlan("cpu", "cpu", vae_tiling=True, vae_slicing=False, reason="test")
    model = VideoModel(v, pipe, plan, log=logs.append)
    out = model.generate(
        Request(
            prompt="a cat",
            negative_prompt="",
            num_frames=FRAMES,
            num_inference_steps=2,
            guidance_scale=6.0,
            use_dynamic_cfg=True,
            seed=1,
        )  # fmt: skip
    ).frames
    assert out.shape == (FRAMES, TINY_HEIGHT, TINY_WIDTH, 3)
    why = "its 24x16 tiles would change the frame size"
    assert f"VAE tiling off for {TINY_WIDTH}x{TINY_HEIGHT}: {why}" in logs
    assert pipe.vae.use_tiling is False
