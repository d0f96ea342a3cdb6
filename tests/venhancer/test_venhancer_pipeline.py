"""VEnhancer plumbing with tiny random diffusers/transformers parts: text, VAE, enhance, cost."""

import shutil

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cogvx.dev import venhancer as tiny
from cogvx.venhancer import arith, cost, text, vae
from cogvx.venhancer.controlnet import VEnhancerUNet, VideoControlNet
from cogvx.venhancer.pipeline import VEnhancer
from cogvx.venhancer.unet import build_unet
from tests.support.shared_fixtures import fixture_dir

FIXTURE_CKPT = fixture_dir("venhancer") / "unet/model.safetensors"


@pytest.fixture(scope="module")
def venhancer():
    return tiny.tiny_venhancer(seed=0)


def _frames(t=6, h=24, w=40, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, h, w, 3))
    return np.clip(base + rng.integers(-20, 20, (t, h, w, 3)), 0, 255).astype(np.uint8)


def test_text_encoder_penultimate_layer():
    """A 24-layer tower at its penultimate layer + ln_final equals the 23-layer SD-2 form."""
    tok = tiny.tiny_tokenizer()
    full = tiny.tiny_text_encoder(len(tok), layers=text.OPENCLIP_LAYERS)
    cut = tiny.tiny_text_encoder(len(tok), layers=text.OPENCLIP_LAYERS - 1)
    missing, _ = cut.load_state_dict(full.state_dict(), strict=False)
    assert not missing
    prompts = [text.full_prompt("a cat"), text.NEGATIVE_PROMPT]
    a = text.encode_text(tok, full, prompts)
    b = text.encode_text(tok, cut, prompts)
    assert a.shape == (2, 77, tiny.TEXT_DIM)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    ids = tok(["a cat"], padding="max_length", max_length=77).input_ids[0]
    assert ids[-1] == 0 and ids.count(0) > 60  # zero padding, as open_clip.tokenize
    assert text.full_prompt("") == text.POSITIVE_PROMPT


def test_tiled_decode(venhancer):
    torch.manual_seed(0)
    z = torch.randn(1, 4, 7, 6, 10)
    with torch.no_grad():
        plain = venhancer.vae.decode(z[0].permute(1, 0, 2, 3) / 0.18215, num_frames=7).sample
    one = vae.tiled_decode(venhancer.vae, z)  # one tile, one 7-frame window
    torch.testing.assert_close(one[0].permute(1, 0, 2, 3), plain, rtol=0, atol=1e-5)
    many = vae.tiled_decode(venhancer.vae, z, tile=(4, 6), overlap=(2, 2), frame_window=(3, 1))
    assert many.shape == (1, 3, 7, 48, 80) and torch.isfinite(many).all()
    assert torch.corrcoef(torch.stack([many.flatten(), one.flatten()]))[0, 1] > 0.5
    w = vae.gaussian_weights(81, 62)
    assert w.shape == (62, 81) and w.argmax() == 31 * 81 + 40  # y peak at h/2 (original)


def test_encode_repeats_key_frames():
    sharp = tiny.tiny_vae(seed=1)
    with torch.no_grad():
        sharp.quant_conv.bias[
            4:
        ] = -12.0  # log-variance: a narrow posterior makes frames tell apart
    frames = torch.rand(3, 3, 16, 24) * 2 - 1
    z = vae.encode_frames(sharp, frames, repeats=3, generator=torch.Generator().manual_seed(0))
    assert z.shape == (1, 4, 7, 2, 3)
    with torch.no_grad():
        mean = sharp.encode(frames).latent_dist.mean * sharp.config.scaling_factor
    want = mean[[0, 0, 0, 1, 1, 1, 2]].permute(1, 0, 2, 3)[None]
    torch.testing.assert_close(z, want, rtol=0, atol=0.01)
    assert 0 < (z[:, :, 0] - z[:, :, 1]).abs().max() < 0.01  # fresh posterior noise per repeat


def test_enhance_end_to_end(venhancer, tmp_path):
    logs, steps = [], []
    out = venhancer.enhance(
        _frames(), in_fps=8, prompt="a cat", up_scale=2, target_fps=16, solver_mode="normal",
        steps=2, seed=1, size_policy="exact", log=logs.append,
        progress=lambda i, n: steps.append((i, n)),
    )  # fmt: skip
    assert out.frames.shape == (11, 48, 80, 3) and out.frames.dtype == np.uint8
    assert out.fps == 16 and out.plan.interp == 1 and out.plan.latent_shape == (4, 11, 10, 16)
    assert out.cost.frame_evaluations == 11 * 2 * 2
    assert steps == [(1, 2), (2, 2)]
    assert "44 frame-evaluations" in logs[0]
    assert out.frames.std() > 1  # not a flat image

    venhancer.save_folder(tmp_path / "w")
    loaded = VEnhancer.from_folder(tmp_path / "w", device="cpu", dtype=torch.float32)
    kw = dict(in_fps=8, up_scale=1, target_fps=8, solver_mode="normal", steps=1,
              guidance_scale=1.0, size_policy="exact", log=lambda m: None)  # fmt: skip
    a = venhancer.enhance(_frames(3, 16, 16), seed=3, **kw)
    b = loaded.enhance(_frames(3, 16, 16), seed=3, **kw)
    assert np.array_equal(a.frames, b.frames)  # same weights, same seed: same video
    c = loaded.enhance(_frames(3, 16, 16), seed=4, **kw)
    assert not np.array_equal(a.frames, c.frames)


def test_from_folder_with_original_checkpoint(tmp_path, venhancer):
    """A folder holding the authors' checkpoint file (here the tiny original) instead of unet/."""
    folder = tmp_path / "w"
    venhancer.vae.save_pretrained(folder / "vae")
    venhancer.tokenizer.save_pretrained(folder / "tokenizer")
    encoder = tiny.tiny_text_encoder(len(venhancer.tokenizer), hidden=1024)  # the fixture's width
    encoder.save_pretrained(folder / "text_encoder")
    shutil.copy(FIXTURE_CKPT, folder / "venhancer_v2.safetensors")
    v = VEnhancer.from_folder(folder, device="cpu", dtype=torch.float32)
    assert v.model.unet.config.block_out_channels == [32, 64, 64, 64]
    out = v.enhance(
        _frames(2, 16, 16), in_fps=8, up_scale=1, target_fps=8, solver_mode="normal", steps=1,
        guidance_scale=1.0, size_policy="exact", seed=0, log=lambda m: None,
    )  # fmt: skip
    assert out.frames.shape == (2, 16, 16, 3)


def test_enhance_bf16():
    v = tiny.tiny_venhancer(seed=2)
    v = VEnhancer(v.model, v.vae, v.tokenizer, v.text_encoder, "cpu", torch.bfloat16)
    logs = []
    out = v.enhance(
        _frames(3, 16, 16), in_fps=8, up_scale=1, target_fps=8, steps=3, guidance_scale=1.0,
        size_policy="exact",
        seed=0, log=logs.append,
    )  # fmt: skip
    assert out.frames.shape == (3, 16, 16, 3) and (out.cost.steps, out.cost.passes) == (14, 1)
    assert "'fast' always runs 14 steps; steps=3 is unused" in logs[0]
    assert next(v.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(noise_aug=0), "noise_aug=0"),
        (dict(up_scale=0.5), "up_scale"),
        (dict(solver_mode="slow"), "solver_mode"),
        (dict(steps=0), "steps"),
        (dict(chunk_overlap=20), "chunk_overlap"),
        (dict(guidance_scale=0.5), "guidance_scale"),
        (dict(frames=np.zeros((1, 8, 8, 3), np.uint8)), "T>=2"),
        (dict(frames=np.zeros((2, 8, 8, 3), np.float32)), "uint8"),
        (dict(size_policy="huge"), "size_policy"),
    ],
)
def test_enhance_refuses_bad_inputs(venhancer, bad, match):
    kw = dict(frames=_frames(2, 8, 8), in_fps=8.0, log=lambda m: None) | bad
    with pytest.raises(ValueError, match=match):
        venhancer.enhance(**kw)


def test_from_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        VEnhancer.from_folder(tmp_path, device="cpu")
    for part in ("vae", "text_encoder", "tokenizer"):
        (tmp_path / part).mkdir()
    with pytest.raises(FileNotFoundError, match="venhancer_v2"):
        VEnhancer.from_folder(tmp_path, device="cpu")


def test_exact_size_policy():
    p = arith.make_plan(49, 8, 480, 720, 1.5, 16, size_policy="exact")
    assert (p.target_h, p.target_w) == (720, 1080) and (p.padded_h, p.padded_w) == (720, 1088)
    q = arith.make_plan(49, 8, 480, 720, 1.5, 16)  # the original scales up to 1.5x 720p area
    assert (q.target_h, q.target_w) == (960, 1440)
    for h, w in ((10, 10), (48, 80), (1254, 1880)):
        _, right, _, bottom = arith.pad_minimal(h, w)
        assert (h + bottom - 16) % 64 == 0 and (w + right) % 64 == 0 and right < 64


def test_flop_count_on_meta_matches_real_run():
    """The meta-device count (used for the docs table) equals a real run's count.

    The real run uses the math attention kernel: CPU flash attention is not counted by torch.
    """
    cfg = tiny.TINY_UNET_CONFIG
    torch.manual_seed(0)
    model = VEnhancerUNet(build_unet(cfg), VideoControlNet.from_unet_config(cfg)).eval()
    x = torch.randn(1, 4, 3, 10, 16)
    y = torch.randn(1, 77, cfg["cross_attention_dim"])
    t = torch.tensor([5])
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        model(x, t, y, x, t, t, torch.arange(3)[None])
    meta = cost.flops_per_frame(10, 16, frames=3, config=cfg)
    assert meta * 3 == counter.get_total_flops() > 0


def test_run_cost_of_original_defaults():
    plan = arith.make_plan(49, 8, 480, 720, 4, 24)
    c = cost.run_cost(plan, "fast", 15, 7.5)
    assert (c.frames_per_step, c.steps, c.passes) == (7 * 31 + 40, 14, 2)
    assert c.frame_evaluations == 7196 and (c.latent_h, c.latent_w) == (162, 240)
    assert cost.run_cost(plan, "normal", 8, 1.0).frame_evaluations == 257 * 8
