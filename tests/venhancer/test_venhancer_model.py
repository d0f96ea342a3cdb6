"""VEnhancer UNet + ControlNet: the tiny original checkpoint loads strictly and matches."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel
from safetensors.torch import load_file, save_file

from cogvx.venhancer import convert
from cogvx.venhancer.controlnet import VEnhancerUNet, VideoControlNet
from cogvx.venhancer.unet import RELEASED_CONFIG, check_latent_size
from tests.support.shared_fixtures import fixture_dir

FIX = fixture_dir("venhancer") / "unet"


@pytest.fixture(scope="module")
def checkpoint():
    return load_file(FIX / "model.safetensors")


@pytest.fixture(scope="module")
def model(checkpoint):
    return convert.load_venhancer_unet(checkpoint)


@pytest.fixture(scope="module")
def ref():
    return load_file(FIX / "reference.safetensors")


def _inputs(ref, b):
    names = ("x", "t", "y", "hint", "t_hint", "s_cond", "mask_cond")
    return [ref[f"{b}.{n}"] for n in names]


@pytest.mark.parametrize("name", ["tiny", "released"])
def test_key_map_matches_fixture(name):
    data = json.loads((FIX / f"diffusers_key_map_{name}.json").read_text())
    cfg = data["diffusers_config"]
    assert {k: convert.map_key(k, cfg) for k in data["map"]} == {
        k: v["diffusers"] for k, v in data["map"].items()
    }


def test_released_layout_converts_strictly():
    """Every key of the released ControlledV2VUNet (2180 tensors) lands on a diffusers parameter."""
    sd = {}
    for line in (FIX / "released_model_keys.txt").read_text().splitlines():
        if not line.startswith("#"):
            name, shape = line.split(" ", 1)
            dims = [int(d) for d in shape.strip("()").split(",") if d.strip()]
            sd[name] = torch.empty(dims, device="meta")
    config, unet_sd, cn_sd = convert.convert_state_dict(sd)
    assert config == RELEASED_CONFIG
    assert sum(v.numel() for v in unet_sd.values()) == 1_411_233_860
    assert sum(v.numel() for v in cn_sd.values()) == 633_575_936


@pytest.mark.parametrize("b", ["b1", "b2"])
def test_forward_matches_original(model, ref, b):
    x, t, y, *cond = _inputs(ref, b)
    with torch.no_grad():
        down, mid = model.controlnet(x, t, y, *cond)
        out = model.unet(
            x, t, y, down_block_additional_residuals=down, mid_block_additional_residual=mid
        ).sample
        plain = model.unet(x, t, encoder_hidden_states=y).sample
    for i, res in enumerate([*down, mid]):
        torch.testing.assert_close(res, ref[f"{b}.inter.control_{i:02d}"], rtol=0, atol=1e-4)
    torch.testing.assert_close(plain, ref[f"{b}.inter.out_without_control"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out, ref[f"{b}.out"], rtol=0, atol=1e-4)
    assert (out - plain).abs().max() > 0.1  # the ControlNet matters


def test_safetensors_checkpoint(tmp_path, checkpoint, model):
    st = tmp_path / "venhancer_v2.safetensors"
    save_file(checkpoint, st)
    got, want = convert.load_venhancer_unet(st).state_dict(), model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_convert_to_folder_and_legacy_pickle(tmp_path, checkpoint, model):
    legacy = tmp_path / "venhancer_paper.pt"
    # the authors' layout ({"state_dict": ...} is unwrapped too) in the pre-zip format: no mmap
    torch.save({"state_dict": checkpoint}, legacy, _use_new_zipfile_serialization=False)
    out = convert.convert_checkpoint(legacy, tmp_path / "w", dtype=torch.float32)
    unet = UNet3DConditionModel.from_pretrained(out / "unet")
    controlnet = VideoControlNet.from_pretrained(out / "controlnet")
    assert (out / "unet/diffusion_pytorch_model.safetensors").is_file()
    got = VEnhancerUNet(unet, controlnet).state_dict()
    want = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert unet.down_blocks[0].downsamplers[0].conv.padding == (2, 1)  # patched on load


def test_checkpoint_errors(tmp_path, checkpoint):
    extra = dict(checkpoint, **{"VideoControlNet.unexpected.weight": torch.zeros(1)})
    with pytest.raises(convert.CheckpointError, match="1 unused keys"):
        convert.convert_state_dict(extra)
    missing = {k: v for k, v in checkpoint.items() if k != "out.2.bias"}
    with pytest.raises(convert.CheckpointError, match="1 missing"):
        convert.convert_state_dict(missing)
    with pytest.raises(convert.CheckpointError, match="no `VideoControlNet.` keys"):
        convert.convert_state_dict({k: v for k, v in checkpoint.items() if "Control" not in k})
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": checkpoint, "cfg": Path("x")}, evil)  # not plain tensors
    with pytest.raises(convert.CheckpointError, match="evil.pt"):
        convert.load_checkpoint(evil)
    with pytest.raises(convert.CheckpointError, match="does not exist"):
        convert.load_checkpoint(tmp_path / "absent.pt")


def test_latent_size_rule():
    for h, w in ((18, 24), (10, 16), (122, 184), (162, 240), (90, 160)):
        check_latent_size(h, w)
    for h, w in ((16, 24), (20, 24), (18, 20)):
        with pytest.raises(ValueError, match="8k\\+2"):
            check_latent_size(h, w)
