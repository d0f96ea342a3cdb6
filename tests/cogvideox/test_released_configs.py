"""The released configs as data: tiny models keep every field but sizes, and the full-size
models counted on the meta device match the published sizes."""

from __future__ import annotations

import pytest

from cogvx.cogvideox import released
from cogvx.dev.tiny import build_tiny_pipeline
from cogvx.models import (
    RELEASE_SCHEDULER,
    TEXT_ENCODER_PARAMS,
    TRANSFORMER_PARAMS,
    VAE_PARAMS,
    VARIANTS,
    scheduler_config,
)

MODELS = list(released.TRANSFORMER)


def _fields(config) -> dict:
    out = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def test_every_variant_has_released_configs():
    assert sorted(MODELS) == sorted(VARIANTS) == sorted(released.VAE)


@pytest.mark.parametrize("model", MODELS)
def test_tiny_models_change_only_sizes(model):
    pipe = build_tiny_pipeline(model)
    for got, want in (
        (_fields(pipe.transformer.config), released.transformer_config(model)),
        (_fields(pipe.vae.config), released.vae_config(model)),
    ):
        assert set(got) == set(want)
        changed = {k for k in want if got[k] != want[k]}
        assert changed <= released.SIZE_FIELDS, {k: (got[k], want[k]) for k in changed}
    t5 = pipe.text_encoder.config.to_dict()
    want = released.text_encoder_config()
    # transformers 5 stores the release's tie_word_embeddings=False as scale_decoder_outputs=False
    # and sets tie_word_embeddings=True (an encoder has no head to tie)
    assert t5["scale_decoder_outputs"] is False
    want.pop("tie_word_embeddings")
    changed = {k for k in want if t5[k] != want[k]}
    assert changed <= released.TEXT_ENCODER_SIZE_FIELDS, {k: (t5[k], want[k]) for k in changed}
    assert type(pipe.scheduler).__name__ == RELEASE_SCHEDULER
    sched = _fields(pipe.scheduler.config)
    assert {k: sched[k] for k in scheduler_config(VARIANTS[model])} == scheduler_config(
        VARIANTS[model]
    )
    assert pipe.tokenizer.model_max_length == released.TOKENIZER_MAX_LENGTH == 226


def test_released_fields_by_model():
    cfg = released.transformer_config
    assert cfg("t2v-2b")["num_layers"] == 30 and cfg("t2v-5b")["num_layers"] == 42
    assert not cfg("t2v-2b")["use_rotary_positional_embeddings"]
    assert cfg("i2v-5b")["use_learned_positional_embeddings"]
    assert cfg("i2v-1.5")["ofs_embed_dim"] == 512 and cfg("t2v-1.5")["patch_size_t"] == 2
    assert released.vae_config("t2v-1.5")["invert_scale_latents"]
    assert released.vae_config("t2v-2b")["scaling_factor"] == VARIANTS["t2v-2b"].vae_scaling_factor
    for m in MODELS:
        assert released.vae_config(m)["scaling_factor"] == VARIANTS[m].vae_scaling_factor


@pytest.fixture(scope="module")
def table():
    return {r["model"]: r for r in released.size_table()}


def test_full_size_parameters_match_the_published_sizes(table):
    for model, published in released.PUBLISHED_PARAMS.items():
        assert abs(table[model]["params"] / published - 1) < 0.2, (model, table[model])
    assert table["i2v-5b"]["params"] > table["t2v-5b"]["params"]  # 16 more input channels


def test_memory_policy_uses_the_counted_sizes(table):
    # The memory policy's weight sizes are these counts, not estimates.
    for model, row in table.items():
        assert (
            VARIANTS[model].memory.transformer_params == row["params"] == TRANSFORMER_PARAMS[model]
        )
        assert row["text_encoder_params"] == TEXT_ENCODER_PARAMS
        assert row["vae_params"] == VAE_PARAMS


def test_flops_per_call_grow_with_the_tokens(table):
    # 5b: 13 x 30 x 45 video tokens + 226 text; 1.5: 11 x 48 x 85 (81 frames padded to 22
    # latents, then 2-frame patches) + 226: attention is quadratic, so 1.5 costs far more.
    five, fifteen, two = (table[m]["gflop_per_call"] for m in ("t2v-5b", "t2v-1.5", "t2v-2b"))
    assert 250_000 < five < 450_000  # ~2 x params x tokens + 4 x tokens^2 x width x layers
    assert 3.5 < fifteen / five < 5.5 and two < five
