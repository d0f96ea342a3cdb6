"""The GPU path on a CUDA device (skipped without one): the setup-time speed-ups, the memory plans
and fast_mode on the tiny models. CI has no GPU; `benchmarks/gpu/on_device.sh` runs these on a
lent card before the speed benchmark, so the first full-size run does not meet a broken path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cogvx.cogvideox.generate import Request, VideoModel
from cogvx.dev.tiny import build_tiny_pipeline, save_tiny_weights
from cogvx.speed.apply import measure_device
from cogvx.speed.attention import restore_default_processor, use_dispatch_processor
from cogvx.speed.select import BACKENDS, installed_packages, plan_speedups
from tests.support.tiny_inputs import transformer_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _on_cuda(kwargs: dict, dtype: torch.dtype) -> dict:
    def move(x):
        if isinstance(x, tuple):
            return tuple(move(t) for t in x)
        if isinstance(x, torch.Tensor):
            return x.to("cuda", dtype) if x.is_floating_point() else x.to("cuda")
        return x

    return {k: move(v) for k, v in kwargs.items()}


def test_dispatch_processor_per_backend_matches_diffusers():
    """native is diffusers' own SDPA call (bit-identical); each fused kernel is close to it."""
    pipe = build_tiny_pipeline("t2v-5b")
    transformer = pipe.transformer.to("cuda", torch.bfloat16)
    kwargs = _on_cuda(transformer_inputs(pipe, 9), torch.bfloat16)
    with torch.no_grad():
        reference = transformer(**kwargs)[0].float()
        device = measure_device()
        tried = []
        for name in ("native", "_native_flash", "_native_cudnn", "_native_efficient"):
            if BACKENDS[name].missing(device, installed_packages()):
                continue
            use_dispatch_processor(transformer, name)
            out = transformer(**kwargs)[0].float()
            tried.append(name)
            if name == "native":
                assert torch.equal(out, reference)
            else:
                err = (out - reference).abs().max().item() / reference.abs().max().item()
                assert err < 2e-2, f"{name}: max error {err:.3g} of the output's range"
        restore_default_processor(transformer)
    assert "native" in tried


def _load(tmp_path, model: str, monkeypatch, **env: str) -> tuple[VideoModel, list[str]]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    folder = save_tiny_weights(model, tmp_path / model)
    lines: list[str] = []
    return VideoModel.load(model, str(folder), log=lines.append), lines


def _request(model: VideoModel, fast_mode: str, seed: int = 7) -> Request:
    v = model.variant
    image = None
    if v.task == "i2v":
        from PIL import Image

        image = Image.new("RGB", (v.width, v.height), (90, 140, 200))
    return Request(
        prompt="a cat on the grass",
        negative_prompt="",
        num_frames=v.default_frames,
        num_inference_steps=6,
        guidance_scale=6.0,
        use_dynamic_cfg=True,
        seed=seed,
        image=image,
        fast_mode=fast_mode,
    )


@pytest.mark.parametrize("model", ["t2v-5b", "t2v-2b", "i2v-1.5"])
def test_setup_applies_the_planned_speedups_and_warm_up_keeps_them(tmp_path, monkeypatch, model):
    """setup() on this card: the plan it logs is the pure function's, the compiled (and, on
    sm 8.9+, fp8) warm-up runs without falling back, and generations are repeatable."""
    loaded, lines = _load(tmp_path, model, monkeypatch)
    expected = plan_speedups(measure_device(), installed_packages(), loaded.plan.offload)
    assert loaded.plan.device == "cuda" and loaded.plan.offload == "none"
    assert loaded.speed == expected, "\n".join(lines)  # warm-up fell back: its lines say why
    assert any(line.startswith("speed: warm-up took") for line in lines)
    first = loaded.generate(_request(loaded, "off")).frames
    assert first.std() > 0
    for mode in ("balanced", "fast"):
        assert loaded.generate(_request(loaded, mode)).frames.shape == first.shape
    again = loaded.generate(_request(loaded, "off")).frames
    assert np.array_equal(first, again), "off after fast differs from off before"


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_plans_give_the_same_frames_as_none(tmp_path, monkeypatch, offload):
    """The same weights, kernels and seed whether the pipeline stays on the card or not."""
    monkeypatch.setenv("COGVX_COMPILE", "0")
    monkeypatch.setenv("COGVX_QUANTIZE", "none")
    resident, _ = _load(tmp_path / "none", "t2v-5b", monkeypatch, COGVX_OFFLOAD="none")
    expected = resident.generate(_request(resident, "off")).frames
    del resident
    torch.cuda.empty_cache()
    moved, lines = _load(tmp_path / offload, "t2v-5b", monkeypatch, COGVX_OFFLOAD=offload)
    assert moved.plan.offload == offload, "\n".join(lines)
    assert np.array_equal(moved.generate(_request(moved, "off")).frames, expected)
