"""User LoRAs through real predictions: served over loopback HTTP, cached, swapped, unloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.support.coglet_harness import CogletServer
from tests.support.e2e import data_uri, make_video, predict_failed, predict_ok, runner_env
from tests.support.loras import save_diffusers_lora
from tests.support.media import assert_different_video, assert_same_file, decode

BASE = {"prompt": "a cat on the dog", "num_frames": 9, "seed": 5}


@pytest.fixture(scope="module")
def loras(weights_server, tmp_path_factory) -> dict[str, str]:
    """name -> URL of LoRA files (good and bad) on the session's loopback server."""
    root = tmp_path_factory.mktemp("loras")
    files = {
        "/style.safetensors": save_diffusers_lora(root / "style.safetensors", seed=1),
        "/other.safetensors": save_diffusers_lora(root / "other.safetensors", seed=2),
    }
    wide = root / "wide.safetensors"  # made for a model with 64-wide attention
    save_file(
        {
            "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 64),
            "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4),
        },
        str(wide),
    )
    files["/wide.safetensors"] = wide
    pickle = root / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    files["/model.pt"] = pickle
    weights_server.files.update(files)
    return {name.strip("/").split(".")[0]: weights_server.url(name) for name in files}


@pytest.fixture(scope="module")
def server(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora-e2e")
    with CogletServer("cog.yaml", env=runner_env(tmp, weights_server.serve("t2v-5b"))) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        server.tmp = tmp  # type: ignore[attr-defined]
        yield server


def test_lora_is_downloaded_once_and_no_lora_is_the_base_model_exactly(
    server, weights_server, loras, tmp_path
):
    """base, LoRA, LoRA, scale 0, base, LoRA: the base and LoRA files recur byte for byte."""
    base, _ = predict_ok(server, tmp_path, "base.mp4", **BASE)
    styled, body = predict_ok(server, tmp_path, "s1.mp4", lora_url=loras["style"], **BASE)
    assert "lora: downloaded" in body["logs"] and "lora: loaded" in body["logs"]
    assert_different_video(base, styled)

    again, body = predict_ok(server, tmp_path, "s2.mp4", lora_url=loras["style"], **BASE)
    assert "is already loaded" in body["logs"] and "downloaded" not in body["logs"]
    assert_same_file(again, styled)

    zero, body = predict_ok(
        server, tmp_path, "z.mp4", lora_url=loras["style"], lora_scale=0, **BASE
    )
    assert "lora_scale is 0, running the base model" in body["logs"]
    assert_same_file(zero, base)

    none, body = predict_ok(server, tmp_path, "n.mp4", **BASE)
    assert "lora: unloaded" in body["logs"]
    assert_same_file(none, base)

    back, body = predict_ok(server, tmp_path, "b.mp4", lora_url=loras["style"], **BASE)
    assert "lora: cache hit" in body["logs"]  # from the disk cache, not the network
    assert_same_file(back, styled)
    reseeded, _ = predict_ok(server, tmp_path, "r.mp4", lora_url=loras["style"],
                             **{**BASE, "seed": 6})  # fmt: skip
    assert_different_video(reseeded, styled)
    assert weights_server.count("/style.safetensors") == 1
    cached = list((server.tmp / "loras").glob("*.safetensors"))
    assert len(cached) == 1


def test_a_different_lora_replaces_the_loaded_one(server, loras, tmp_path):
    a, _ = predict_ok(server, tmp_path, "a.mp4", lora_url=loras["style"], **BASE)
    b, body = predict_ok(server, tmp_path, "b.mp4", lora_url=loras["other"], **BASE)
    assert "lora: unloaded" in body["logs"] and "other.safetensors" in body["logs"]
    assert not np.array_equal(decode(a), decode(b))
    half, _ = predict_ok(server, tmp_path, "h.mp4", lora_url=loras["other"], lora_scale=0.5,
                         **BASE)  # fmt: skip
    assert not np.array_equal(decode(half), decode(b))


def test_lora_applies_to_video_to_video(server, loras, tmp_path):
    clip = data_uri(make_video(tmp_path / "in.mp4", 1.2), "video/mp4")
    inputs = {"prompt": "a cat", "video": clip, "strength": 1.0, "seed": 3}
    plain, _ = predict_ok(server, tmp_path, "p.mp4", **inputs)
    styled, body = predict_ok(server, tmp_path, "s.mp4", lora_url=loras["style"], **inputs)
    assert "video-to-video" in body["logs"]
    assert not np.array_equal(decode(plain), decode(styled))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("model", "pickled PyTorch checkpoint"),
        ("wide", "'transformer.transformer_blocks.0.attn1.to_q.lora_A.weight' has shape [4, 64]"),
        ("missing", "could not download it"),  # one message for every fetch failure
        (None, "is not a LoRA source"),
    ],
)
def test_bad_loras_fail_with_a_clear_error(server, loras, weights_server, name, message):
    url = loras.get(name) or (weights_server.url("/missing.safetensors") if name else "nope")
    error = predict_failed(server, lora_url=url, **BASE)
    assert message in error, error


def test_lora_scale_range_is_in_the_schema(server, loras):
    status, body = server.predict({**BASE, "lora_url": loras["style"], "lora_scale": 5})
    assert status == 422 and body["detail"][0]["loc"][-1] == "lora_scale"
