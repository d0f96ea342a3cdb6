"""RIFE HDv3 IFNet: strict loading of the released layout, warping, interpolation plumbing."""

import numpy as np
import pytest
import torch

from cogvx.dev.enhance import tiny_ifnet_state_dict
from cogvx.fast.rife import (
    IFNet,
    RifeWeightsError,
    ifnet_from_state_dict,
    interpolate,
    load_ifnet,
    merge,
    pad_multiple,
    warp,
)


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> IFNet:
    return ifnet_from_state_dict(tiny_ifnet_state_dict(width=8, seed=0), "cpu")


def test_released_layout_and_tiny_builder_share_keys():
    released = IFNet().state_dict()
    tiny_sd = tiny_ifnet_state_dict(width=8)
    assert list(released) == list(tiny_sd)
    assert len(released) == 160  # 4 IFBlocks x 40 tensors (block_tea included)
    assert released["block0.conv0.0.0.weight"].shape == (45, 11, 3, 3)
    assert released["block_tea.conv0.0.0.weight"].shape == (45, 14, 3, 3)
    assert released["block2.conv1.2.weight"].shape == (45, 4, 4, 4)  # flow head (ConvTranspose)
    assert sum(v.numel() for v in released.values()) == 3_038_015


def test_flownet_pkl_loads_strictly(tmp_path):
    sd = tiny_ifnet_state_dict(width=8, seed=1)
    path = tmp_path / "flownet.pkl"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)  # as saved from DDP training
    model = load_ifnet(path, device="cpu")
    assert model.width == 8 and not model.training
    assert next(model.parameters()).dtype == torch.float32
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key


def test_missing_extra_and_misshaped_keys_named(tmp_path):
    sd = tiny_ifnet_state_dict(width=8)
    missing = dict(sd)
    del missing["block1.convblock2.1.0.bias"]
    with pytest.raises(RifeWeightsError, match=r"missing keys \['block1.convblock2.1.0.bias'\]"):
        ifnet_from_state_dict(missing, "cpu")
    extra = {**sd, "contextnet.conv1.weight": torch.zeros(1)}
    with pytest.raises(RifeWeightsError, match="unexpected keys.*contextnet.conv1.weight"):
        ifnet_from_state_dict(extra, "cpu")
    bad = {**sd, "block2.conv2.2.weight": torch.zeros(4, 2, 4, 4)}
    with pytest.raises(RifeWeightsError, match=r"'block2.conv2.2.weight' has shape \(4, 2, 4, 4\)"):
        ifnet_from_state_dict(bad, "cpu")
    path = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"conv_first.weight": torch.zeros(2, 3, 3, 3)}, str(path))
    with pytest.raises(RifeWeightsError, match="other.safetensors: missing key"):
        load_ifnet(path, device="cpu")


def test_warp_integer_shift_and_border():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 9, 11)
    flow = torch.zeros(2, 2, 9, 11)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # sample 3 px right, 2 px up
    out = warp(img, flow)
    assert torch.allclose(out[:, :, 2:, :8], img[:, :, :7, 3:], atol=1e-5)
    # outside the frame the edge pixel repeats (border padding)
    assert torch.allclose(out[:, :, 0, :8], img[:, :, 0, 3:], atol=1e-5)
    assert torch.allclose(out[:, :, 2:, 8:], img[:, :, :7, 10:].expand(-1, -1, -1, 3), atol=1e-5)


def test_warp_keeps_few_size_grids():
    from cogvx.fast import rife

    img = torch.rand(1, 3, 6, 7)
    first = warp(img, torch.zeros(1, 2, 6, 7))
    for size in range(8, 8 + 2 * rife.MAX_GRIDS):  # a server meets many frame sizes
        warp(torch.rand(1, 3, size, size), torch.zeros(1, 2, size, size))
        assert len(rife._GRIDS) <= rife.MAX_GRIDS
    assert torch.equal(warp(img, torch.zeros(1, 2, 6, 7)), first)  # a rebuilt grid is the same


def test_warp_half_pixel_is_bilinear():
    img = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 4, 6).contiguous()
    flow = torch.zeros(1, 2, 4, 6)
    flow[:, 0] = 0.5
    out = warp(img, flow)
    assert torch.allclose(out[0, 0, :, :5], img[0, 0, :, :5] + 0.5, atol=1e-5)


def test_merge_with_zero_flow_and_zero_logit_averages():
    a, b = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    out = merge(a, b, torch.zeros(1, 4, 8, 8), torch.zeros(1, 1, 8, 8))
    assert torch.allclose(out, (a + b) / 2, atol=1e-6)


def test_zeroed_heads_give_the_average_of_neighbours():
    sd = tiny_ifnet_state_dict(width=8, seed=2)
    for key in list(sd):  # last transposed convs of flow (conv1) and mask (conv2) heads
        if ".conv1.2." in key or ".conv2.2." in key:
            sd[key] = torch.zeros_like(sd[key])
    model = ifnet_from_state_dict(sd, "cpu")
    frames = _frames(3, 20, 30)
    out = interpolate(model, frames, factor=2)
    expected = (frames[:-1].astype(np.float64) + frames[1:]) / 2
    assert np.abs(out[1::2] - expected).max() <= 0.5 + 1e-6


def test_interpolate_counts_keeps_originals(tiny):
    frames = _frames(5, 40, 50)  # not multiples of 32: padded inside, cropped back
    for factor in (2, 4):
        out = interpolate(tiny, frames, factor=factor, batch_size=3)
        assert out.shape == ((5 - 1) * factor + 1, 40, 50, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out[::factor], frames)
        # new frames are not copies of the originals
        assert not np.array_equal(out[1], frames[0]) and not np.array_equal(out[1], frames[1])
    assert interpolate(tiny, frames, factor=1).shape == frames.shape


def test_interpolate_batches_and_recursion_agree(tiny):
    frames = _frames(4, 32, 32, seed=3)
    by4 = interpolate(tiny, frames, factor=4, batch_size=3)
    one = interpolate(tiny, frames, factor=4, batch_size=1)
    assert np.abs(by4.astype(int) - one.astype(int)).max() <= 1
    by2 = interpolate(tiny, frames, factor=2)
    assert np.abs(by4[::2].astype(int) - by2.astype(int)).max() <= 1  # midpoints come first


def test_ifnet_is_symmetric_in_time(tiny):
    torch.manual_seed(0)
    a, b = torch.rand(2, 3, 32, 64), torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        assert torch.allclose(tiny(a, b), tiny(b, a), atol=1e-5)
        half = tiny(a, b, scale=0.5)
    assert half.shape == a.shape


def test_interpolate_low_scale_pads_to_64(tiny):
    assert pad_multiple(1.0) == 32 and pad_multiple(0.5) == 64
    out = interpolate(tiny, _frames(2, 36, 40), factor=2, scale=0.5)
    assert out.shape == (3, 36, 40, 3)


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="factor=3"):
        interpolate(tiny, _frames(2, 32, 32), factor=3)
    with pytest.raises(ValueError, match="uint8"):
        interpolate(tiny, _frames(2, 32, 32).astype(np.float32))
    with pytest.raises(ValueError, match="scale=0.3"):
        interpolate(tiny, _frames(2, 32, 32), scale=0.3)
    with pytest.raises(ValueError, match="width=7"):
        IFNet(width=7)
