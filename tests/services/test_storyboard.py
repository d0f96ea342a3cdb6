"""LLM -> FLUX -> I2V in batch on tiny models: files, manifest, resume, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cogvx.dev.flux import save_tiny_flux
from cogvx.dev.llm import save_tiny_llm
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, save_tiny_weights
from cogvx.services.storyboard import MANIFEST, Settings, run_batch
from tests.support.media import ffprobe, sha256

SIZE = (TINY_WIDTH * 2, TINY_HEIGHT * 2)  # FLUX needs multiples of 16; the I2V folder is 48x32


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("story-weights")
    return {
        "llm": str(save_tiny_llm(root / "llm")),
        "flux": str(save_tiny_flux(root / "flux")),
        "video": str(save_tiny_weights("i2v-5b", root / "i2v")),
    }


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COGVX_WEIGHTS_CACHE", str(tmp_path / "cache"))


def _settings(**kw) -> Settings:
    return Settings(**{"num_videos": 2, "topic": "the sea", "words": 12, "image_steps": 2,
                       "video_steps": 2, **kw})  # fmt: skip


def test_batch_makes_prompts_frames_videos_and_a_manifest(weights, tmp_path):
    out = tmp_path / "out"
    logs: list[str] = []
    items = run_batch(_settings(), out, weights["llm"], weights["flux"], weights["video"],
                      size=SIZE, log=logs.append)  # fmt: skip
    manifest = json.loads((out / MANIFEST).read_text())
    assert [d["index"] for d in manifest["items"]] == [0, 1]
    for d in manifest["items"]:
        assert d["prompt"] and len(d["prompt"].split()) <= 12
        assert (d["prompt_seed"], d["image_seed"], d["video_seed"]) == (
            d["index"], 1000 + d["index"], 2000 + d["index"],
        )  # fmt: skip
        info = ffprobe(out / d["video"])
        assert (info["width"], info["height"], info["frames"]) == (TINY_WIDTH, TINY_HEIGHT, 49)
        assert set(d["seconds"]) == {"prompt", "image", "video"}
    assert items[0].prompt != items[1].prompt  # each item samples with its own seed
    assert manifest["settings"]["topic"] == "the sea"


def test_rerun_skips_finished_items_and_remakes_a_missing_video(weights, tmp_path):
    out = tmp_path / "out"
    args = (weights["llm"], weights["flux"], weights["video"])
    run_batch(_settings(), out, *args, size=SIZE)
    before = {p.name: sha256(p) for p in out.glob("*.mp4")}
    (out / "0001.mp4").unlink()
    logs: list[str] = []
    run_batch(
        _settings(), out, None, weights["flux"], weights["video"], size=SIZE, log=logs.append
    )  # fmt: skip  (no LLM needed: prompts are in the manifest)
    assert "resuming: 1 of 2 videos are already in" in "\n".join(logs)
    after = {p.name: sha256(p) for p in out.glob("*.mp4")}
    assert after == before  # the same seeds remade the same file


def test_wrapped_weights_folders_load_and_a_rerun_with_other_settings_is_refused(weights, tmp_path):
    wrapped = {}
    for name in ("llm", "flux"):  # a tarball may wrap its files in a folder
        (tmp_path / f"{name}-tar").mkdir()
        (tmp_path / f"{name}-tar" / "inner").symlink_to(weights[name])
        wrapped[name] = str(tmp_path / f"{name}-tar")
    out = tmp_path / "out"
    one = _settings(num_videos=1)
    run_batch(one, out, wrapped["llm"], wrapped["flux"], weights["video"], size=SIZE)
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(ValueError, match=r"other image_steps, seed: run with the same settings"):
        run_batch(_settings(num_videos=1, seed=5, image_steps=1), out, None, wrapped["flux"],
                  weights["video"], size=SIZE)  # fmt: skip
    assert (out / MANIFEST).read_bytes() == before  # nothing of the old batch was touched
    two = _settings(num_videos=2, prompts=None)  # more videos of the same batch: allowed
    items = run_batch(two, out, wrapped["llm"], wrapped["flux"], weights["video"], size=SIZE)
    assert sorted(items) == [0, 1]


def test_cli_with_a_prompt_file(weights, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red boat on a calm lake\n\n")
    out = tmp_path / "cli"
    cmd = [sys.executable, "tools/llm_flux_cogvideox.py", "--prompts", str(prompts),
           "--flux-weights", weights["flux"], "--video-weights", weights["video"],
           "--out", str(out), "--num-videos", "1", "--image-steps", "1", "--video-steps", "1",
           "--size", f"{SIZE[0]}x{SIZE[1]}"]  # fmt: skip
    env = {"COGVX_WEIGHTS_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    item = json.loads((out / MANIFEST).read_text())["items"][0]
    assert item["prompt"] == "a red boat on a calm lake" and "prompt" not in item["seconds"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    bad = subprocess.run([*cmd[:3], str(empty), *cmd[4:]], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "no prompts" in bad.stderr
    size = subprocess.run([*cmd[:-1], "720"], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert size.returncode == 2 and "--size '720': expected WIDTHxHEIGHT" in size.stderr
