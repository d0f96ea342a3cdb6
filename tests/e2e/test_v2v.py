"""Video-to-video: frame planning, the 1.5 latent rule, the T2V runner's video input end to end."""

from __future__ import annotations

import numpy as np
import pytest

from cogvx.cogvideox.generate import Request, VideoModel
from cogvx.cogvideox.v2v import load_video, plan_frames
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH
from cogvx.models import get_variant
from tests.support.coglet_harness import CogletServer
from tests.support.e2e import data_uri, make_video, predict_failed, predict_ok, runner_env
from tests.support.media import assert_different_video, assert_same_file, ffprobe


def test_frames_are_sampled_at_the_model_rate_and_cut_to_an_allowed_count():
    times = np.arange(90) / 30  # 3 s at 30 fps
    plan = plan_frames(times, 8, get_variant("t2v-5b").v2v_frames)
    assert len(plan.indices) == 25 and plan.indices[:2] + plan.indices[3:4] == [0, 4, 11]  # .375 s
    assert "sampled at 8 fps from 30 fps: 25 frames" in plan.note
    long = plan_frames(np.arange(3000) / 30, 8, [9, 17, 25, 33, 41, 49])
    assert len(long.indices) == 49 and long.indices[-1] == 180  # the first 6 s
    jump = np.append(np.arange(90) / 30, 1e9)  # one frame stamped 30 years on
    far = plan_frames(jump, 8, [9, 17, 25])  # sized by the counts used, not by the last stamp
    assert far.indices == plan_frames(np.arange(90) / 30, 8, [9, 17, 25]).indices


def test_short_clips_use_consecutive_frames_and_too_short_ones_fail():
    plan = plan_frames(np.arange(15) / 30, 8, [9, 17, 25])
    assert plan.indices == list(range(9)) and "consecutive" in plan.note
    with pytest.raises(ValueError, match=r"video is too short: 5 frames .* at least 9 frames"):
        plan_frames(np.arange(5) / 30, 8, [9, 17, 25])


def test_15_takes_whole_temporal_patches():
    assert get_variant("t2v-1.5").v2v_frames[:3] == [21, 37, 53]
    assert get_variant("t2v-1.5").v2v_frames[-1] == 165  # what 161 frames run as
    assert get_variant("t2v-5b").v2v_frames == get_variant("t2v-5b").allowed_frames


def test_15_video_to_video_runs_in_process(tmp_path, tiny_tarballs):
    folder = tiny_tarballs["t2v-1.5"].parent / "t2v-1.5"  # the session's tiny folder
    model = VideoModel.load("t2v-1.5", str(folder), log=lambda _: None)
    clip = tmp_path / "in.mp4"
    make_video(clip, 1.5)
    v = model.variant
    frames = load_video(clip, v.width, v.height, v.fps, v.v2v_frames, log=lambda _: None)
    assert frames.shape == (21, TINY_HEIGHT, TINY_WIDTH, 3)
    req = Request(
        prompt="a cat",
        negative_prompt="",
        num_frames=None,
        num_inference_steps=2,
        guidance_scale=6.0,
        use_dynamic_cfg=True,
        seed=1,
        video=frames,
        strength=0.5,
    )
    # 21 frames are 6 latents (whole 2-latent patches); the VAE decodes an even count to 4 each
    assert model.generate(req).frames.shape == (24, TINY_HEIGHT, TINY_WIDTH, 3)


@pytest.fixture(scope="module")
def server(weights_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2v")
    with CogletServer("cog.yaml", env=runner_env(tmp, weights_server.serve("t2v-5b"))) as server:
        assert server.wait_ready(timeout=300)["status"] == "READY", server.logs()
        server.tmp = tmp  # type: ignore[attr-defined]
        yield server


def test_t2v_runner_turns_a_video_into_a_video(server, tmp_path):
    clip = data_uri(make_video(tmp_path / "in.mp4", 3), "video/mp4")
    out, body = predict_ok(server, tmp_path, "o.mp4", prompt="a cat", video=clip, strength=0.5,
                           seed=2)  # fmt: skip
    info = ffprobe(out)
    assert (info["frames"], info["fps"]) == (25, 8.0)
    assert (info["width"], info["height"]) == (TINY_WIDTH, TINY_HEIGHT)
    logs = body["logs"]
    assert "video: 160x120 h264 at 30 fps; sampled at 8 fps from 30 fps: 25 frames" in logs
    assert "centre-cropped" in logs and "num_frames=49 ignored" in logs
    assert "video-to-video over 25 frames (strength 0.5)" in logs


def test_a_short_clip_is_used_frame_by_frame(server, tmp_path):
    clip = data_uri(make_video(tmp_path / "in.mp4", 0.5), "video/mp4")
    out, body = predict_ok(server, tmp_path, "o.mp4", prompt="a cat", video=clip, num_frames=9)
    assert ffprobe(out)["frames"] == 9
    assert "using its first 9 consecutive frames" in body["logs"]


def test_same_video_and_seed_give_the_same_file_byte_for_byte(server, tmp_path):
    clip = data_uri(make_video(tmp_path / "in.mp4", 0.5), "video/mp4")
    inputs = {"prompt": "a cat", "video": clip, "num_frames": 9, "strength": 0.5}
    a, body = predict_ok(server, tmp_path, "a.mp4", seed=6, **inputs)
    assert "video-to-video" in body["logs"]
    b, _ = predict_ok(server, tmp_path, "b.mp4", seed=6, **inputs)
    c, _ = predict_ok(server, tmp_path, "c.mp4", seed=7, **inputs)
    assert_same_file(a, b)
    assert_different_video(a, c)


@pytest.mark.parametrize(
    ("seconds", "inputs", "message"),
    [
        (None, {}, "not a video file"),
        (5 / 30, {}, "video is too short: 5 frames"),
        (1, {"strength": 0.3}, "leaves no denoising step"),
    ],
)
def test_bad_videos_fail_clearly(server, tmp_path, seconds, inputs, message):
    if seconds is None:
        data = b"hello, this is not a video" * 10
    else:
        data = make_video(tmp_path / "in.mp4", seconds)
    error = predict_failed(server, prompt="a cat", video=data_uri(data, "video/mp4"), **inputs)
    assert message in error
