"""Real-ESRGAN fast path: spandrel detects tiny released-layout weights; tiling, sizes, errors."""

import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cogvx.dev.enhance import tiny_realesrgan_state_dict
from cogvx.fast.upscale import (
    StateDictError,
    load_state_dict_file,
    load_upscaler,
    tile_starts,
    upscale_frames,
    upscale_tensor,
    upscaler_from_state_dict,
)


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("kind", "scale", "arch"),
    [
        ("compact", 4, "Compact"),
        ("compact", 2, "Compact"),
        ("rrdb", 4, "ESRGAN"),
        ("rrdb", 2, "ESRGAN"),
    ],
)
def test_spandrel_detects_tiny_weights_from_files(tmp_path, kind, scale, arch):
    sd = tiny_realesrgan_state_dict(kind, scale)
    pth = tmp_path / "model.pth"
    torch.save({"params_ema": sd}, pth)  # the released Real-ESRGAN container
    st = tmp_path / "model.safetensors"
    save_file(sd, str(st))
    for path in (pth, st):
        up = load_upscaler(path, device="cpu")
        assert (up.architecture, up.scale, up.dtype) == (arch, scale, torch.float32)
        assert not up.descriptor.model.training
    # x2 RRDBNet is the pixel-unshuffle variant (RealESRGAN_x2plus): 12 input channels
    if kind == "rrdb" and scale == 2:
        assert sd["conv_first.weight"].shape[1] == 12
        assert "unshuffle" in up.descriptor.tags


def test_tiny_builder_matches_released_layout():
    rrdb = tiny_realesrgan_state_dict("rrdb", 4, width=64, depth=23)
    assert len(rrdb) == 23 * 3 * 5 * 2 + 6 * 2  # RealESRGAN_x4plus: 702 tensors
    assert rrdb["body.22.rdb3.conv5.weight"].shape == (64, 64 + 4 * 32, 3, 3)
    compact = tiny_realesrgan_state_dict("compact", 4, width=64, depth=32)
    assert compact["body.66.weight"].shape == (48, 64, 3, 3)  # realesr-general-x4v3's last conv
    assert compact["body.65.weight"].shape == (64,)  # PReLU


def test_tile_starts_cover_and_overlap():
    assert tile_starts(30, 40, 8) == [0]
    starts = tile_starts(100, 40, 16)
    assert starts == [0, 24, 48, 60]
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + 40 - b >= 16
    assert starts[-1] + 40 == 100


def test_tiled_equals_untiled_when_overlap_covers_receptive_field():
    torch.manual_seed(0)
    # 3 convs of 3x3: each output pixel sees 3 input pixels around it
    up = upscaler_from_state_dict(tiny_realesrgan_state_dict("compact", 4, depth=1), "cpu")
    x = torch.rand(2, 3, 72, 100)
    whole = upscale_tensor(up, x, 4, tile=512)
    assert whole.shape == (2, 3, 288, 400)
    tiled = upscale_tensor(up, x, 4, tile=40, overlap=16)  # 2x4 tiles, 4 px dropped at each cut
    assert torch.allclose(tiled, whole, atol=1e-5)
    naive = upscale_tensor(up, x, 4, tile=40, overlap=4)  # too little overlap: visible seams
    assert (naive - whole).abs().max() > 1e-2


def test_tiled_rrdb_close_to_untiled():
    torch.manual_seed(0)
    up = upscaler_from_state_dict(tiny_realesrgan_state_dict("rrdb", 4, depth=1), "cpu")
    frames = _frames(2, 48, 56)
    whole = upscale_frames(up, frames, tile=512)
    tiled = upscale_frames(up, frames, tile=32, overlap=12)
    diff = np.abs(whole.astype(int) - tiled.astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.parametrize(("kind", "scale"), [("compact", 4), ("rrdb", 2)])
def test_frames_out_sizes_and_batches(kind, scale):
    up = upscaler_from_state_dict(tiny_realesrgan_state_dict(kind, scale), "cpu")
    frames = _frames(3, 21, 35)  # odd sizes: the x2 RRDBNet pads to a multiple of 4 itself
    out = upscale_frames(up, frames, tile=16, overlap=4, batch_size=2)
    assert out.shape == (3, 21 * scale, 35 * scale, 3) and out.dtype == np.uint8
    one = upscale_frames(up, frames, tile=16, overlap=4, batch_size=1)
    assert np.abs(out.astype(int) - one.astype(int)).max() <= 1  # float round-off only
    # frames differ, so outputs differ: nothing got shared across the batch
    assert not np.array_equal(out[0], out[1])


def test_bf16_runs_close_to_fp32():
    sd = tiny_realesrgan_state_dict("compact", 2)
    frames = _frames(1, 16, 24)
    ref = upscale_frames(upscaler_from_state_dict(sd, "cpu"), frames)
    bf16 = upscaler_from_state_dict(sd, "cpu", torch.bfloat16)
    assert next(bf16.descriptor.model.parameters()).dtype == torch.bfloat16
    out = upscale_frames(bf16, frames)
    assert np.abs(out.astype(int) - ref.astype(int)).mean() < 3


def test_bad_inputs():
    up = upscaler_from_state_dict(tiny_realesrgan_state_dict("compact", 2), "cpu")
    with pytest.raises(ValueError, match="uint8"):
        upscale_frames(up, np.zeros((1, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(T,H,W,3\)"):
        upscale_frames(up, np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="overlap=20"):
        upscale_frames(up, _frames(1, 8, 8), tile=32, overlap=20)
    with pytest.raises(ValueError, match="kind='swinir'"):
        tiny_realesrgan_state_dict("swinir")


class _Payload:
    """Not a tensor: a weights-only load must refuse to build it."""


def test_weight_files_refused_with_their_name(tmp_path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"conv_first.weight": _Payload()}, f, protocol=2)
    with pytest.raises(StateDictError, match="evil.pth could not be read"):
        load_state_dict_file(evil)
    with pytest.raises(StateDictError, match="suffix '.onnx'"):
        load_state_dict_file(tmp_path / "model.onnx")
    with pytest.raises(StateDictError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")
    other = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(StateDictError, match="other.safetensors.*not a Real-ESRGAN"):
        load_upscaler(other)


def test_module_prefix_stripped(tmp_path):
    sd = tiny_realesrgan_state_dict("compact", 4)
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    assert set(load_state_dict_file(path)) == set(sd)
