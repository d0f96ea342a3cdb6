"""The dispatcher processor computes what diffusers' CogVideoX processor computes (issue "Fast on
the GPU"): on CPU with the native backend the outputs are bit-identical."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, build_tiny_pipeline
from cogvx.errors import SetupError
from cogvx.speed.attention import (
    DispatchCogVideoXAttnProcessor,
    restore_default_processor,
    use_dispatch_processor,
)
from cogvx.speed.select import BACKENDS
from tests.support.tiny_inputs import transformer_inputs

MODELS = {"t2v-2b": 9, "t2v-5b": 9, "i2v-5b": 9, "t2v-1.5": 17}  # model -> frames


def _forward(transformer, kwargs) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**kwargs)[0]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_native_dispatch_equals_diffusers_processor(model):
    pipe = build_tiny_pipeline(model)
    kwargs = transformer_inputs(pipe, MODELS[model])
    assert (kwargs["image_rotary_emb"] is None) == (model == "t2v-2b")  # RoPE covered and not
    before = _forward(pipe.transformer, kwargs)

    count = use_dispatch_processor(pipe.transformer, "native")
    assert count == len(pipe.transformer.transformer_blocks) > 0
    processors = pipe.transformer.attn_processors.values()
    assert all(isinstance(p, DispatchCogVideoXAttnProcessor) for p in processors)
    # Bit-identical: the q/k/v work is diffusers' own, and the native backend hands SDPA the very
    # (batch, heads, seq, head_dim) tensors diffusers' processor does.
    assert torch.equal(_forward(pipe.transformer, kwargs), before)

    assert restore_default_processor(pipe.transformer) == count
    processors = pipe.transformer.attn_processors.values()
    assert all(type(p) is CogVideoXAttnProcessor2_0 for p in processors)
    assert torch.equal(_forward(pipe.transformer, kwargs), before)


def test_bf16_dispatch_is_bit_identical_too():
    pipe = build_tiny_pipeline("t2v-5b")
    pipe.transformer.to(torch.bfloat16)
    kwargs = transformer_inputs(pipe, 9)
    for key in ("hidden_states", "encoder_hidden_states"):
        kwargs[key] = kwargs[key].to(torch.bfloat16)
    before = _forward(pipe.transformer, kwargs)
    use_dispatch_processor(pipe.transformer, "native")
    assert torch.equal(_forward(pipe.transformer, kwargs), before)


def _run(pipe) -> np.ndarray:
    return pipe(
        prompt="a cat on the dog",
        height=TINY_HEIGHT,
        width=TINY_WIDTH,
        num_frames=9,
        num_inference_steps=2,
        guidance_scale=6.0,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(7),
    ).frames[0]


def test_full_pipeline_gives_the_same_frames():
    pipe = build_tiny_pipeline("t2v-5b")
    before = _run(pipe)
    use_dispatch_processor(pipe.transformer, "native")
    assert np.array_equal(_run(pipe), before)
    restore_default_processor(pipe.transformer)
    assert np.array_equal(_run(pipe), before)


def test_default_backend_is_the_dispatchers_active_one():
    pipe = build_tiny_pipeline("t2v-2b")
    kwargs = transformer_inputs(pipe, 9)
    before = _forward(pipe.transformer, kwargs)
    use_dispatch_processor(pipe.transformer, None)
    assert torch.equal(_forward(pipe.transformer, kwargs), before)


@pytest.mark.parametrize("name", ["bogus", "flash_hub", "flash_varlen", "NATIVE"])
def test_unknown_backend_is_refused_with_the_allowed_names(name):
    with pytest.raises(SetupError, match=rf"{name}.*not supported.*'native'.*'sage'"):
        DispatchCogVideoXAttnProcessor(name)
    pipe = build_tiny_pipeline("t2v-2b")
    with pytest.raises(SetupError, match="not supported"):
        use_dispatch_processor(pipe.transformer, name)
    assert all(
        type(p) is CogVideoXAttnProcessor2_0 for p in pipe.transformer.attn_processors.values()
    )


def test_every_supported_name_is_a_diffusers_backend():
    assert set(BACKENDS) <= {b.value for b in AttentionBackendName}


def test_a_backend_whose_package_is_missing_is_refused_at_install():
    if importlib.util.find_spec("sageattention") is not None:
        pytest.skip("sageattention is installed")
    pipe = build_tiny_pipeline("t2v-2b")
    with pytest.raises(SetupError, match="'sage' is not usable.*sageattention"):
        use_dispatch_processor(pipe.transformer, "sage")


def test_a_backend_package_without_version_metadata_is_refused_by_the_plans_rule(
    tmp_path, monkeypatch
):
    """The same rule as the plan (`package_missing`): the package resolves but its metadata gives
    no version, so installing the backend says so (the plan would not have picked it)."""
    if importlib.util.find_spec("sageattention") is not None:
        pytest.skip("sageattention is installed")
    (tmp_path / "sageattention").mkdir()
    (tmp_path / "sageattention" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    pipe = build_tiny_pipeline("t2v-2b")
    with pytest.raises(SetupError, match="'sage' is not usable: sageattention gives no version"):
        use_dispatch_processor(pipe.transformer, "sage")
