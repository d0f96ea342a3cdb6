"""The tiny FLUX.1-dev pipeline folder built offline (cogvx.dev.flux, tools/make_tiny_weights.py
--model flux): FluxPipeline loads it, the configs are the release's but for sizes, both
tokenizers work, images come at the requested size (multiples of 16), the same seed is the same
image and the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from cogvx.dev.flux import (
    FLUX1_DEV_CLIP,
    FLUX1_DEV_SCHEDULER,
    FLUX1_DEV_TRANSFORMER,
    FLUX1_DEV_VAE,
    SIZE_FIELDS,
    TINY_FLUX_HEIGHT,
    TINY_FLUX_WIDTH,
    meta_flux_transformer,
    save_tiny_flux,
)

REPO = Path(__file__).resolve().parents[2]
PROMPT = "A photo of a cat sitting on a wooden table, soft morning light."
RELEASED = {
    "transformer": (FLUX1_DEV_TRANSFORMER, "config.json"),
    "vae": (FLUX1_DEV_VAE, "config.json"),
    "scheduler": (FLUX1_DEV_SCHEDULER, "scheduler_config.json"),
    "text_encoder": (FLUX1_DEV_CLIP, "config.json"),
}
COMPONENTS = {"transformer", "vae", "scheduler", "text_encoder", "text_encoder_2", "tokenizer"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "flux")


@pytest.fixture(scope="module")
def pipe(folder) -> FluxPipeline:
    return FluxPipeline.from_pretrained(str(folder), local_files_only=True)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _image(pipe: FluxPipeline, seed: int, height: int, width: int, steps: int = 2) -> np.ndarray:
    out = pipe(
        PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=3.5,
        generator=torch.Generator().manual_seed(seed), output_type="np",
    )  # fmt: skip
    return out.images[0]


# ---- the release's configs, shrunk ----


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_configs_are_the_releases_but_for_sizes(folder, name):
    released, file = RELEASED[name]
    ours = json.loads((folder / name / file).read_text())
    for key in released.keys() - SIZE_FIELDS[name] - {"vocab_size"}:
        assert ours[key] == released[key], key


def test_the_fields_flux_depends_on(pipe):
    t, vae = pipe.transformer.config, pipe.vae.config
    assert (t.guidance_embeds, t.patch_size, t.in_channels, t.out_channels) == (True, 1, 64, None)
    assert sum(t.axes_dims_rope) == t.attention_head_dim and list(t.axes_dims_rope) == [4, 14, 14]
    assert t.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert t.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 0.3611, 0.1159)
    assert pipe.vae_scale_factor == 8 and 4 * vae.latent_channels == t.in_channels  # 2x2 packing
    s = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert (s.use_dynamic_shifting, s.base_shift, s.max_shift) == (True, 0.5, 1.15)
    assert (s.base_image_seq_len, s.max_image_seq_len, s.shift) == (256, 4096, 3.0)


def test_full_size_transformer_on_the_meta_device_is_11_9b_parameters():
    n = sum(p.numel() for p in meta_flux_transformer().parameters())
    assert 11.85e9 < n < 11.95e9  # FLUX.1-dev's "12B"


# ---- the tokenizers ----


def test_clip_tokenizer_is_clip_format_with_the_specials_last(folder, pipe):
    tok = pipe.tokenizer
    vocab = json.loads((folder / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert tok.model_max_length == 77 and len(tok) == pipe.text_encoder.config.vocab_size
    assert tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [
        len(tok) - 2, len(tok) - 1,
    ]  # fmt: skip  # CLIP pools at argmax(input_ids): <|endoftext|> must be the largest id
    assert list(vocab)[256] == "!</w>" and 500 < len(tok) < 1000
    ids = tok(PROMPT).input_ids
    assert ids[0] == len(tok) - 2 and ids[-1] == len(tok) - 1 and len(ids) < 20
    assert (
        tok.decode(ids, skip_special_tokens=True)
        == "a photo of a cat sitting on a wooden table , soft morning light ."
    )
    padded = tok(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == len(tok) - 1  # pad = <|endoftext|>


def test_t5_tokenizer_reads_512_tokens(pipe):
    tok = pipe.tokenizer_2
    assert tok.model_max_length == 512 and len(tok) == pipe.text_encoder_2.config.vocab_size
    ids = tok(PROMPT.lower()).input_ids  # cogvx.dev.tiny's vocabulary has no capitals
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert len(tok(PROMPT, padding="max_length", max_length=512).input_ids) == 512


# ---- generation ----


def test_image_has_the_requested_size_and_the_seed_fixes_it(pipe):
    pil = pipe(
        PROMPT, height=TINY_FLUX_HEIGHT, width=TINY_FLUX_WIDTH, num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    ).images[0]  # fmt: skip
    assert pil.size == (TINY_FLUX_WIDTH, TINY_FLUX_HEIGHT) and pil.mode == "RGB"
    a = _image(pipe, 0, TINY_FLUX_HEIGHT, TINY_FLUX_WIDTH)
    assert a.shape == (TINY_FLUX_HEIGHT, TINY_FLUX_WIDTH, 3) and np.isfinite(a).all()
    assert np.array_equal(a, _image(pipe, 0, TINY_FLUX_HEIGHT, TINY_FLUX_WIDTH))
    assert not np.array_equal(a, _image(pipe, 1, TINY_FLUX_HEIGHT, TINY_FLUX_WIDTH))
    assert a.std() > 0  # not a constant image


def test_the_real_size_720x480_packs(pipe):
    assert 720 % 16 == 0 and 480 % 16 == 0  # FLUX's rule: 8x VAE, then 2x2 latent patches
    img = _image(pipe, 0, 480, 720, steps=1)
    assert img.shape == (480, 720, 3)


# ---- determinism and the CLI ----


def test_cli_writes_the_same_bytes_and_other_seeds_other_weights(folder, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_tiny_weights.py"), "--model", "flux",
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote tiny flux to {out}" in done.stdout
    ours, cli = _files(folder), _files(out)
    assert ours.keys() == cli.keys() and {k.split("/")[0] for k in ours} >= COMPONENTS
    for name in ours:  # another process, the same seed: byte-identical
        assert cli[name] == ours[name], name
    other = _files(save_tiny_flux(tmp_path / "seed1", seed=1))
    weights = {k for k in ours if k.endswith(".safetensors")}
    assert len(weights) == 4 and all(other[k] != ours[k] for k in weights)
    assert all(other[k] == ours[k] for k in ours.keys() - weights)  # configs and tokenizers
