"""Image-to-video end to end: tiny I2V weights over HTTP -> real coglet -> ffprobe, logs, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH
from tests.support.coglet_harness import CogletServer
from tests.support.e2e import data_uri, gradient, image_uri, predict_failed, predict_ok, runner_env
from tests.support.loras import save_diffusers_lora
from tests.support.media import assert_different_video, assert_same_file, decode, ffprobe


@pytest.fixture(scope="module")
def server_5b(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("i2v5b")
    url = weights_server.serve("i2v-5b")
    with CogletServer("cog.i2v.yaml", env=runner_env(tmp, url)) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        yield server


@pytest.fixture(scope="module")
def lora_url(weights_server, tmp_path_factory) -> str:
    """A peft LoRA for the tiny transformers (same attention shapes in T2V and I2V), served."""
    path = save_diffusers_lora(tmp_path_factory.mktemp("lora") / "style.safetensors")
    weights_server.files["/i2v-style.safetensors"] = path
    return weights_server.url("/i2v-style.safetensors")


def test_5b_animates_an_rgba_image_at_its_only_size(server_5b, tmp_path):
    img = gradient(TINY_WIDTH * 3, TINY_HEIGHT * 3, "RGBA")
    video, body = predict_ok(server_5b, tmp_path, "a.mp4", image=image_uri(img), prompt="a cat",
                             seed=3)  # fmt: skip
    info = ffprobe(video)
    assert (info["width"], info["height"]) == (TINY_WIDTH, TINY_HEIGHT)
    assert (info["frames"], info["fps"]) == (49, 8.0)
    assert "image: converted RGBA to 8-bit RGB" in body["logs"]
    assert f"-> {TINY_WIDTH}x{TINY_HEIGHT} (crop)" in body["logs"]
    assert body["metrics"]["video_output_count"] == 1


def test_same_image_and_seed_give_the_same_file_byte_for_byte(server_5b, tmp_path):
    img = image_uri(gradient(TINY_WIDTH, TINY_HEIGHT))
    a, _ = predict_ok(server_5b, tmp_path, "a.mp4", image=img, prompt="a cat", seed=8)
    b, _ = predict_ok(server_5b, tmp_path, "b.mp4", image=img, prompt="a cat", seed=8)
    c, _ = predict_ok(server_5b, tmp_path, "c.mp4", image=img, prompt="a cat", seed=9)
    assert_same_file(a, b)
    assert_different_video(a, c)


def test_portrait_image_is_fitted_and_the_logs_say_how(server_5b, tmp_path):
    img = gradient(TINY_HEIGHT * 2, TINY_WIDTH * 2)  # portrait
    _, body = predict_ok(server_5b, tmp_path, "p.mp4", image=image_uri(img, "JPEG"),
                         prompt="a dog", image_fit="pad")  # fmt: skip
    assert "the image is portrait but the output is landscape: black bars" in body["logs"]


def test_lora_changes_the_image_to_video_output(server_5b, tmp_path, lora_url):
    img = image_uri(gradient(TINY_WIDTH, TINY_HEIGHT))
    base, _ = predict_ok(server_5b, tmp_path, "b.mp4", image=img, prompt="a cat", seed=4)
    styled, body = predict_ok(server_5b, tmp_path, "s.mp4", image=img, prompt="a cat", seed=4,
                              lora_url=lora_url)  # fmt: skip
    assert "lora: loaded" in body["logs"]
    assert not np.array_equal(decode(base), decode(styled))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is a text file, not a picture" * 4, "is not an image this server can read"),
        (b"", "is an empty file"),
    ],
)
def test_bad_images_fail_with_a_clear_error(server_5b, data, message):
    error = predict_failed(server_5b, image=data_uri(data, "image/png"), prompt="a cat")
    assert message in error and "image" in error


def test_schema_has_no_frame_count_and_rejects_unknown_fits(server_5b):
    status, body = server_5b.predict(
        {"image": image_uri(gradient(8, 8)), "prompt": "a cat", "image_fit": "zoom"}
    )
    assert status == 422 and body["detail"][0]["loc"][-1] == "image_fit"
    status, body = server_5b.predict({"prompt": "a cat"})
    assert status == 422 and body["detail"][0]["loc"][-1] == "image"


@pytest.fixture(scope="module")
def server_15(weights_server, tmp_path_factory):
    """CogVideoX1.5-I2V on tiny weights (their RoPE grid covers every size the rule picks)."""
    tmp = tmp_path_factory.mktemp("i2v15")
    url = weights_server.serve("i2v-1.5")
    with CogletServer("cog.i2v-1.5.yaml", env=runner_env(tmp, url)) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        yield server


@pytest.mark.parametrize(
    ("w", "h", "want"),
    [
        (160, 90, (48, 32)),  # 16:9 -> long side capped (1360/768 scaled to the tiny model)
        (90, 120, (32, 48)),  # portrait stays portrait: 32 x 42.7 -> 48
        (100, 100, (32, 32)),
    ],
)
def test_15_output_size_follows_the_image(server_15, tmp_path, w, h, want):
    video, body = predict_ok(server_15, tmp_path, "v.mp4", image=image_uri(gradient(w, h)),
                             prompt="a cat", num_frames=17)  # fmt: skip
    info = ffprobe(video)
    assert (info["width"], info["height"]) == want
    assert (info["frames"], info["fps"]) == (17, 16.0)
    assert f"{w}x{h} -> {want[0]}x{want[1]} (crop)" in body["logs"]


def test_15_frame_rule_is_in_the_schema(server_15):
    status, body = server_15.predict(
        {"image": image_uri(gradient(8, 8)), "prompt": "a cat", "num_frames": 49 + 1}
    )
    assert status == 422 and body["detail"][0]["loc"][-1] == "num_frames"
