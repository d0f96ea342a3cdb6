"""The dataset tool (cogvx.services.caption_dataset, tools/caption_dataset.py) on a local Ray
instance with the tiny caption model on CPU: inputs, JSONL and Parquet rows (bad clips as error
rows), captions equal to one clip at a time, resume after a SIGKILL, and exit statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cogvx.errors import CaptionSetupError, InputError
from cogvx.services.caption_dataset import DatasetJob, list_inputs, run_job
from cogvx.services.caption_dataset_output import (
    FIELDS,
    JsonlSink,
    ParquetSink,
    open_sink,
    row_schema,
)
from cogvx.video import write_video
from tests.support.e2e import tiny_caption_folder
from tools.caption_dataset import main

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "caption_dataset.py"
PROMPT = "Describe."
TOKENS = 6
GOOD = 21  # readable clips; three more are broken
BROKEN = ("noise.mp4", "cut.mp4", "missing.mp4")


@dataclass
class Data:
    weights: Path
    folder: Path  # the clips (some in sub/), a text file beside them
    listing: Path  # every clip, shuffled, a duplicate, a comment, the missing path
    clips: list[str]  # the listing's clips in its order, each once


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp("dataset")
    weights = tiny_caption_folder(root / "weights")
    folder = root / "clips"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    good = []
    for i in range(GOOD):
        frames = rng.integers(0, 255, (8 * (1 + i % 3), 32, 48, 3), dtype=np.uint8)
        where = folder / "sub" if i % 5 == 0 else folder
        good.append(write_video(frames, where / f"clip{i:02d}.mp4", fps=8))
    (folder / "noise.mp4").write_bytes(bytes(rng.integers(0, 255, 3000, np.uint8)))
    (folder / "cut.mp4").write_bytes(good[1].read_bytes()[:300])  # truncated
    (folder / "notes.txt").write_text("not a clip\n")
    clips = [str(p) for p in good] + [str(folder / name) for name in BROKEN]
    clips = [clips[i] for i in rng.permutation(len(clips))]
    listing = root / "list.txt"
    listing.write_text("# clips\n\n" + "\n".join(clips + clips[:2]) + "\n")
    return Data(weights, folder, listing, clips)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def _job(data: Data, inputs: Path, output: Path, **kw) -> DatasetJob:
    kw = {"weights": str(data.weights), "prompt": PROMPT, "max_new_tokens": TOKENS,
          "batch_size": 2, "clips_per_call": 4, **kw}  # fmt: skip
    return DatasetJob(str(inputs), output, **kw)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_rows(rows: list[dict], data: Data) -> None:
    """One row per clip, the CaptionRow fields, errors exactly for the broken clips."""
    assert sorted(r["path"] for r in rows) == sorted(data.clips)
    assert all(tuple(r) == FIELDS for r in rows)
    bad = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(bad) == set(BROKEN), bad
    assert "no such file" in bad["missing.mp4"]
    good = [r for r in rows if not r["error"]]
    assert all(r["caption"] is not None and r["frames_used"] >= 1 for r in good)
    assert all(r["prompt"] == PROMPT and r["strategy"] == "chat" for r in rows)


# ---- without Ray ----


def test_inputs_from_a_folder_a_glob_and_a_list(data, monkeypatch):
    found = list_inputs(str(data.folder))
    assert found == sorted(c for c in data.clips if not c.endswith("missing.mp4"))
    assert list_inputs(str(data.folder / "*.mp4")) == [c for c in found if "/sub/" not in c]
    assert list_inputs(str(data.folder / "**" / "clip*.mp4")) == [
        c for c in found if Path(c).name.startswith("clip")
    ]
    assert list_inputs(str(data.listing)) == data.clips  # order kept, duplicates dropped
    monkeypatch.chdir(data.folder)
    assert list_inputs("clip01.mp4") == [str(data.folder / "clip01.mp4")]
    remote = data.listing.parent / "remote.txt"
    remote.write_text("s3://bucket/a.mp4\nhttps://example.invalid/b.mp4\nfile:///x/c.mp4\n")
    assert list_inputs(str(remote)) == ["s3://bucket/a.mp4", "https://example.invalid/b.mp4",
                                        "/x/c.mp4"]  # fmt: skip


def test_bad_inputs_outputs_and_weights_are_refused(data, tmp_path):
    with pytest.raises(InputError, match="is not a folder, a video file"):
        list_inputs(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no clips found in folder"):
        list_inputs(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no clips found in glob"):
        list_inputs(str(tmp_path / "*.mp4"))
    with pytest.raises(InputError, match=r"must end in \.jsonl or \.parquet; got \.csv"):
        open_sink(tmp_path / "out.csv")
    with pytest.raises(InputError, match="batch_size=0 is out of range"):
        run_job(_job(data, data.listing, tmp_path / "o.jsonl", batch_size=0))
    with pytest.raises(CaptionSetupError, match="no CogVLM2-Caption folder"):
        run_job(_job(data, data.listing, tmp_path / "o.jsonl", weights=str(tmp_path)))


def test_jsonl_drops_the_line_a_kill_cut_off(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"path": "a"}\n{"path": "b"}\n{"path": "c", "capt')
    sink = open_sink(out)
    assert isinstance(sink, JsonlSink) and sink.dropped_torn_line and sink.done == {"a", "b"}
    sink.write([{"path": "c"}])
    assert [r["path"] for r in _jsonl(out)] == ["a", "b", "c"]
    sink.finish(["c", "b", "z"])
    assert [r["path"] for r in _jsonl(out)] == ["c", "b", "a"]
    out.write_text('{"path": "a"}\nnot json\n{"path": "b"}\n')
    with pytest.raises(InputError, match="line 2 is not a caption row"):
        open_sink(out)


def test_parquet_parts_survive_a_kill_and_merge_once_per_path(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "out.parquet"
    row = dict.fromkeys(FIELDS) | {"frames_used": 1, "seconds": 0.5}
    sink = open_sink(out)
    sink.write([row | {"path": "a"}, row | {"path": "b"}])
    sink.write([row | {"path": "c", "caption": "first"}])
    (sink.parts / ".part-000009.parquet.tmp-1").write_bytes(b"half")  # a kill mid-write
    again = open_sink(out)  # the rerun: OUTPUT does not exist yet, the parts do
    assert isinstance(again, ParquetSink) and again.done == {"a", "b", "c"} and again.next == 2
    assert not list(again.parts.glob(".*"))
    again.write([row | {"path": "d"}, row | {"path": "c", "caption": "again"}])
    again.finish(["d", "c", "b"])
    table = pq.read_table(out)
    assert table.schema == row_schema() and not again.parts.exists()
    assert table["path"].to_pylist() == ["d", "c", "b", "a"]
    assert table["caption"].to_pylist()[1] == "again"  # the newest row of a path is kept
    assert open_sink(out).done == {"a", "b", "c", "d"}


def test_a_ray_failure_names_the_cogvx_error_behind_it():
    from cogvx.services.caption_dataset import _cause

    remote = RuntimeError("The actor died\nTraceback:\ncogvx.errors.WeightsError: no tar at x\n")
    assert _cause(remote) == "WeightsError: no tar at x (in a Ray actor: RuntimeError)"
    assert _cause(ValueError("boom\nmore")) == "ValueError: boom"


def test_the_cli_refuses_what_it_cannot_run(data, tmp_path, capsys):
    base = ["--weights", str(data.weights)]
    assert main([str(tmp_path / "none"), str(tmp_path / "o.jsonl"), *base]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([str(data.listing), str(tmp_path / "o.txt"), *base]) == 2
    assert "must end in .jsonl or .parquet" in capsys.readouterr().err
    assert main([str(data.listing), str(tmp_path / "o.jsonl"), "--weights", "/nope"]) == 1
    assert "weights /nope do not exist" in capsys.readouterr().err
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "none"), "o.jsonl", *base],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "error: INPUT" in done.stderr
    assert not list(tmp_path.glob("o.*"))


# ---- on a local Ray instance ----


@pytest.mark.e2e
def test_jsonl_rows_and_captions_equal_one_at_a_time(local_ray, data, tmp_path):
    from cogvx.services.caption import CaptionService

    out = tmp_path / "captions.jsonl"
    lines: list[str] = []
    report = run_job(_job(data, data.listing, out), log=lines.append)
    rows = _jsonl(out)
    _check_rows(rows, data)
    assert (report.listed, report.skipped, report.captioned, report.errors) == (24, 0, 24, 3)
    assert "clips/s" in lines[-1] and report.clips_per_second > 0
    service = CaptionService(str(data.weights), log=lambda _: None)
    captions = {r["path"]: r["caption"] for r in rows}
    for path in [c for c in data.clips if Path(c).name.startswith("clip")][:2]:
        alone = service.run(video=path, prompt=PROMPT, strategy="chat", max_new_tokens=TOKENS,
                            temperature=0.0, top_p=1.0, seed=None)  # fmt: skip
        assert captions[path] == alone


@pytest.mark.e2e
def test_parquet_resumes_from_parts_in_input_order(local_ray, data, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "captions.parquet"
    earlier = open_sink(out)  # the parts a killed run left: 10 clips done, no OUTPUT yet
    done = [p for p in data.clips if Path(p).name not in BROKEN][:10]
    for chunk in (done[:4], done[4:]):
        earlier.write([dict.fromkeys(FIELDS) | {
            "path": p, "caption": "earlier run", "frames_used": 1, "prompt": PROMPT,
            "strategy": "chat",
        } for p in chunk])  # fmt: skip
    report = run_job(_job(data, data.listing, out, ordered=True, clips_per_call=3))
    assert (report.skipped, report.captioned) == (10, 14)
    table = pq.read_table(out)
    assert table.schema == row_schema()
    assert table["path"].to_pylist() == data.clips  # input order, across both runs
    _check_rows(table.to_pylist(), data)
    assert [r["path"] for r in table.to_pylist() if r["caption"] == "earlier run"] == done
    assert not out.with_name(out.name + ".parts").exists()
    again = run_job(_job(data, data.listing, out))  # only the error rows are tried again
    assert (again.skipped, again.captioned, again.errors) == (21, 3, 3)
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len(data.clips)  # their new rows replaced the old ones
    _check_rows(rows, data)


@pytest.mark.e2e
def test_a_rerun_after_sigkill_captions_every_clip_exactly_once(data, tmp_path):
    out = tmp_path / "captions.jsonl"
    cmd = [sys.executable, str(TOOL), str(data.listing), str(out), "--weights", str(data.weights),
           "--prompt", PROMPT, "--max-new-tokens", str(TOKENS), "--batch-size", "1",
           "--clips-per-call", "1", "--num-cpus", "2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed.log"
    with open(log, "w") as f:  # its own process group: the kill takes Ray's processes too
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while not (out.exists() and out.read_text().count("\n") >= 3):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    kept = len(out.read_bytes().splitlines())
    assert 3 <= kept < len(data.clips), "the run must be killed midway"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # bad clips: still 0
    assert f"{len(data.clips)} clips in" in done.stdout
    rows = _jsonl(out)
    assert len(rows) == len(data.clips)  # exactly once: none missing, none twice
    _check_rows(rows, data)
