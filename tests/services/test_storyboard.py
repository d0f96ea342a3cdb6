"""LLM -> FLUX -> I2V in batch on tiny models: files, manifest, timings, resume, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cogvx.dev.flux import save_tiny_flux
from cogvx.dev.llm import save_tiny_llm
from cogvx.dev.tiny import TINY_HEIGHT, TINY_WIDTH, save_tiny_weights
from cogvx.services.storyboard import (
    MANIFEST,
    TIMINGS,
    Settings,
    changed_settings,
    load_manifest,
    run_batch,
    save_manifest,
)
from tests.support.media import ffprobe, sha256

REPO = Path(__file__).resolve().parents[2]
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
                       "video_steps": 2, "size": SIZE, **kw})  # fmt: skip


def test_batch_makes_prompts_frames_videos_and_a_manifest(weights, tmp_path):
    out = tmp_path / "out"
    logs: list[str] = []
    items = run_batch(_settings(), out, weights["llm"], weights["flux"], weights["video"],
                      log=logs.append)  # fmt: skip
    manifest = json.loads((out / MANIFEST).read_text())
    assert [d["index"] for d in manifest["items"]] == [0, 1]
    for d in manifest["items"]:
        assert d["prompt"] and len(d["prompt"].split()) <= 12
        assert (d["prompt_seed"], d["image_seed"], d["video_seed"]) == (
            d["index"], 1000 + d["index"], 2000 + d["index"],
        )  # fmt: skip
        info = ffprobe(out / d["video"])
        assert (info["width"], info["height"], info["frames"]) == (TINY_WIDTH, TINY_HEIGHT, 49)
        assert "seconds" not in d  # timings vary run to run: they live in timings.json
    seconds = json.loads((out / TIMINGS).read_text())["seconds"]
    stages = {"prompt", "image", "video"}
    assert {k: set(v) for k, v in seconds.items()} == {"0": stages, "1": stages}
    assert items[0].prompt != items[1].prompt  # each item samples with its own seed
    assert manifest["settings"]["topic"] == "the sea"
    assert manifest["settings"]["size"] == list(SIZE)


def test_two_identical_runs_write_the_same_bytes(weights, tmp_path):
    args = (weights["llm"], weights["flux"], weights["video"])
    run_batch(_settings(), tmp_path / "a", *args)
    run_batch(_settings(), tmp_path / "b", *args)
    manifest = (tmp_path / "a" / MANIFEST).read_bytes()
    assert manifest == (tmp_path / "b" / MANIFEST).read_bytes()
    files = {p.name: sha256(p) for p in (tmp_path / "a").iterdir() if p.name != TIMINGS}
    assert {p.name: sha256(p) for p in (tmp_path / "b").iterdir() if p.name != TIMINGS} == files
    assert sorted(files) == ["0000.mp4", "0000.png", "0001.mp4", "0001.png", MANIFEST]


def test_rerun_skips_finished_items_and_remakes_a_missing_video(weights, tmp_path):
    out = tmp_path / "out"
    args = (weights["llm"], weights["flux"], weights["video"])
    run_batch(_settings(), out, *args)
    before = {p.name: sha256(p) for p in out.glob("*.mp4")}
    (out / "0001.mp4").unlink()
    logs: list[str] = []
    run_batch(
        _settings(), out, None, weights["flux"], weights["video"], log=logs.append
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
    run_batch(one, out, wrapped["llm"], wrapped["flux"], weights["video"])
    before = (out / MANIFEST).read_bytes()
    refused = (r"other settings \(--image-steps: 2 in its manifest, 1 now; "
               r"--seed: 0 in its manifest, 5 now\): run with the same settings")  # fmt: skip
    with pytest.raises(ValueError, match=refused):
        run_batch(_settings(num_videos=1, seed=5, image_steps=1), out, None, wrapped["flux"],
                  weights["video"])  # fmt: skip
    assert (out / MANIFEST).read_bytes() == before  # nothing of the old batch was touched
    two = _settings(num_videos=2, prompts=None)  # more videos of the same batch: allowed
    items = run_batch(two, out, wrapped["llm"], wrapped["flux"], weights["video"])
    assert sorted(items) == [0, 1]


def test_a_manifest_from_before_size_was_recorded_takes_the_size_of_its_frames(weights, tmp_path):
    out = tmp_path / "out"
    run_batch(_settings(num_videos=1), out, weights["llm"], weights["flux"], weights["video"])
    old = json.loads((out / MANIFEST).read_text())  # rewrite it as the old code wrote it
    del old["settings"]["size"]
    old["items"][0]["seconds"] = json.loads((out / TIMINGS).read_text())["seconds"]["0"]
    (out / MANIFEST).write_text(json.dumps(old, indent=1))
    (out / TIMINGS).unlink()
    with pytest.raises(ValueError, match=r"\(--size: 96x64 in its first frames, 720x480 now\)"):
        run_batch(_settings(num_videos=1, size=(720, 480)), out, None, weights["flux"],
                  weights["video"])  # fmt: skip
    items = run_batch(
        _settings(num_videos=2), out, weights["llm"], weights["flux"], weights["video"]
    )  # fmt: skip  (its own size: resumed)
    assert (out / "0001.png").is_file() and sorted(items) == [0, 1]
    assert json.loads((out / MANIFEST).read_text())["settings"]["size"] == list(SIZE)
    seconds = json.loads((out / TIMINGS).read_text())["seconds"]
    assert seconds["0"] == old["items"][0]["seconds"]  # the old timings moved to timings.json


def test_changed_prompts_are_named_by_count_or_by_the_first_that_differs(tmp_path):
    save_manifest(tmp_path, {}, _settings(prompts=["a boat", "a gull"]))
    assert changed_settings(tmp_path, _settings(prompts=["a boat", "a gull"])) == []
    assert changed_settings(tmp_path, _settings(prompts=["a boat", "a crab"])) == [
        "--prompts (prompt 2): 'a gull' in its manifest, 'a crab' now"
    ]
    assert changed_settings(tmp_path, _settings(prompts=["a boat"], fps=16)) == [
        "fps: 8 in its manifest, 16 now",  # not a CLI option: named as the setting
        "--prompts: 2 prompts in its manifest, 1 now",
    ]
    assert changed_settings(tmp_path, _settings(topic="x" * 100)) == [
        "--prompts: 2 prompts in its manifest, none (the LLM writes them) now",
        f"--topic: 'the sea' in its manifest, '{'x' * 53}...' now",  # still in quotes
    ]


def test_a_manifest_item_this_release_cannot_read_is_named(tmp_path):
    save_manifest(tmp_path, {}, _settings())
    body = json.loads((tmp_path / MANIFEST).read_text())
    body["items"] = [{"index": 0, "prompt": "a boat", "colour": "red"}]  # a key Item lacks
    (tmp_path / MANIFEST).write_text(json.dumps(body))
    with pytest.raises(ValueError, match=r"manifest.json: an item this release cannot read"):
        load_manifest(tmp_path)


def test_cli_with_a_prompt_file(weights, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red boat on a calm lake\n\n")
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools/llm_flux_cogvideox.py"), "--prompts", str(prompts),
           "--flux-weights", weights["flux"], "--video-weights", weights["video"],
           "--out", str(out), "--num-videos", "1", "--image-steps", "1", "--video-steps", "1",
           "--size", f"{SIZE[0]}x{SIZE[1]}"]  # fmt: skip
    env = {"COGVX_WEIGHTS_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    item = json.loads((out / MANIFEST).read_text())["items"][0]
    assert item["prompt"] == "a red boat on a calm lake"
    assert "prompt" not in json.loads((out / TIMINGS).read_text())["seconds"]["0"]  # no LLM
    before = (out / MANIFEST).read_bytes()
    other = subprocess.run([*cmd[:-1], "64x32"], capture_output=True, text=True, env=env,
                           timeout=120)  # fmt: skip
    assert other.returncode == 2, other.stderr[-2000:]
    assert "(--size: 96x64 in its manifest, 64x32 now)" in other.stderr
    assert (out / MANIFEST).read_bytes() == before  # nothing of the old batch was touched
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    bad = subprocess.run([*cmd[:3], str(empty), *cmd[4:]], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "no prompts" in bad.stderr
    size = subprocess.run([*cmd[:-1], "720"], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert size.returncode == 2 and "--size '720': expected WIDTHxHEIGHT" in size.stderr
