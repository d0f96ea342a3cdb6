"""The logged cost of a generation is what the transformer actually computes.

The oracle is torch's FlopCounterMode wrapped around every transformer call of a real run of
the tiny models (built from the released configs), and the same counter on the full-size models
on the meta device at their native shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cogvx.cogvideox import cost, released
from cogvx.cogvideox.generate import Request, VideoModel
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline
from cogvx.gpu import plan_memory
from cogvx.models import FOLDER_OVERRIDES, get_variant


class CountingTransformer:
    """Counts calls, batch sizes and FLOPs of every transformer forward (a real counter).

    Attention runs on SDPA's math backend here: the counter has no formula for the fused CPU
    kernel, and the math backend's two matrix products are what it counts on the meta device.
    """

    def __init__(self, transformer):
        self.calls: list[tuple[int, int]] = []  # (batch, flops)
        self.forward = transformer.forward
        transformer.forward = self

    def __call__(self, *args, **kwargs):
        counter = FlopCounterMode(display=False)
        with counter, sdpa_kernel(SDPBackend.MATH):
            out = self.forward(*args, **kwargs)
        self.calls.append((kwargs["hidden_states"].shape[0], counter.get_total_flops()))
        return out


def _request(model: str, **kw) -> Request:
    v = get_variant(model)
    base = dict(
        prompt="a cat on the dog",
        negative_prompt="",
        num_frames=v.allowed_frames[0],
        num_inference_steps=3,
        guidance_scale=6.0,
        use_dynamic_cfg=False,
        seed=5,
    )
    return Request(**{**base, **kw})


def _model(name: str, folder: Path) -> tuple[VideoModel, list[str]]:
    """The tiny model at its native size (the folder's cogvx.json, as `save_tiny_weights` has)."""
    (folder / FOLDER_OVERRIDES).write_text(json.dumps({"height": TINY_HEIGHT, "width": TINY_WIDTH}))
    v = get_variant(name).with_folder_overrides(folder)
    logs: list[str] = []
    model = VideoModel(v, build_tiny_pipeline(name), plan_memory(v.memory, None), logs.append)
    return model, logs


def _image():
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (TINY_HEIGHT, TINY_WIDTH, 3), dtype=np.uint8))


CASES = [
    ("t2v-2b", {}),
    ("t2v-5b", {"guidance_scale": 1.0}),  # no CFG: batch 1
    ("t2v-1.5", {}),  # 17 frames -> 5 latents, padded to 6 for 2-frame patches
    ("i2v-5b", {"image": "tiny"}),
    ("i2v-1.5", {"image": "tiny", "num_inference_steps": 2}),
    ("t2v-5b", {"video": "tiny", "strength": 0.7, "num_inference_steps": 4}),  # 2 of 4 steps
]


@pytest.mark.parametrize(("model", "kw"), CASES)
def test_logged_cost_is_the_counted_work_of_the_run(model, kw, tmp_path):
    video_model, logs = _model(model, tmp_path)
    if kw.get("image"):
        kw = {**kw, "image": _image()}
    if kw.get("video"):
        n = get_variant(model).v2v_frames[0]
        frames = np.random.default_rng(1).integers(0, 255, (n, TINY_HEIGHT, TINY_WIDTH, 3))
        kw = {**kw, "video": frames.astype(np.uint8), "num_frames": None}
    counting = CountingTransformer(video_model.pipe.transformer)
    video_model.generate(_request(model, **kw))
    line = next(m for m in logs if m.startswith("cost:"))
    req = _request(model, **kw)
    video_model.check(req)
    want = video_model.cost(req, TINY_HEIGHT, TINY_WIDTH)
    assert len(counting.calls) == want.calls
    assert {b for b, _ in counting.calls} == {want.batch}
    assert sum(f for _, f in counting.calls) == want.flops
    assert line == want.describe()
    assert f"{want.calls} transformer calls x batch {want.batch}" in line


@pytest.mark.parametrize("model", list(released.TRANSFORMER))
def test_formula_equals_the_counter_at_full_size_on_the_meta_device(model):
    v = get_variant(model)
    cfg = released.transformer_config(model)
    frames = cost.latent_frames(v.default_frames, cfg)
    assert cost.call_flops(cfg, frames, v.height // 8, v.width // 8) == released.step_flops(model)


def test_frames_pad_to_whole_time_patches():
    one, fifteen = released.transformer_config("t2v-5b"), released.transformer_config("t2v-1.5")
    assert cost.latent_frames(49, one) == 13
    assert cost.latent_frames(81, fifteen) == 22  # 21 latents, padded as diffusers pads
    assert cost.latent_frames(161, fifteen) == 42
    assert cost.video_tokens(22, 96, 170, fifteen) == 11 * 48 * 85


def test_native_5b_run_in_numbers():
    # 50 steps with guidance at 49 x 480 x 720: batch 2 doubles the 332 TFLOP of one call
    c = cost.generation_cost(released.transformer_config("t2v-5b"), 49, 480, 720, 50, 6.0)
    assert (c.calls, c.batch) == (50, 2)
    assert c.flops == 50 * 2 * released.step_flops("t2v-5b")
    assert c.describe() == "cost: 50 transformer calls x batch 2, 664 TFLOP each, 33.2 PFLOP in all"


def test_format_flops():
    assert cost.format_flops(3.32e16) == "33.2 PFLOP"
    assert cost.format_flops(6.644e14) == "664 TFLOP"
    assert cost.format_flops(1.5e18) == "1500 PFLOP"
    assert cost.format_flops(12) == "12 FLOP"
