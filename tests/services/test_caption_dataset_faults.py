"""The dataset tool on a local Ray instance when clips go wrong, with a stand-in captioner (no
model: each Ray actor captions a clip by its name): a clip that kills its actor's process ends as
an error row while the job finishes, a file name that is not UTF-8 is an error row, and a rerun
captions again the clips whose row is an error, its new row replacing the old one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import cogvx.services.caption_dataset as cd
from cogvx.services.caption import HF_REPO
from cogvx.services.caption_batch import CaptionRow
from cogvx.services.caption_dataset_output import FIELDS, rows_table
from tools.caption_dataset import main

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Describe."


class NameCaptioner:
    """ClipCaptioner's stand-in: the caption of a clip is its prompt and name; a batch holding a
    clip whose name has "poison" in it kills the process, as a segfault in a decoder would."""

    def __init__(self, weights: str, prompt: str, strategy: str, **_: Any) -> None:
        self.prompt, self.strategy = prompt, strategy

    def __call__(self, batch: Any) -> Any:
        paths = [str(p) for p in batch.column("path").to_pylist()]
        if any("poison" in Path(p).name for p in paths):
            os._exit(1)
        return rows_table([
            CaptionRow(p, f"{self.prompt} {Path(p).name}", 1, 1.0, HF_REPO, self.prompt,
                       self.strategy, 0.0).as_dict()
            for p in paths
        ])  # fmt: skip


def _weights(folder: Path) -> Path:
    """A folder that passes the driver's weights check (the stand-in loads nothing)."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_poisoned(listing: str, output: str, weights: str) -> None:
    """The job over `listing` with the stand-in captioner (run in a child process)."""
    cd.ClipCaptioner = NameCaptioner  # type: ignore[misc]
    cd.CRASH_RETRIES = 0  # one death a call is enough here: fewer actor restarts to wait for
    job = cd.DatasetJob(listing, Path(output), weights, prompt=PROMPT, clips_per_call=3,
                        num_cpus=2)  # fmt: skip
    report = cd.run_job(job)
    print(f"REPORT {report.captioned} {report.errors}", flush=True)


@pytest.mark.e2e
def test_a_clip_that_kills_its_actor_is_an_error_row_and_the_job_ends(tmp_path):
    weights = _weights(tmp_path / "w")
    clips = [f"/data/clip{i}.mp4" for i in range(5)]
    clips.insert(2, "/data/poison.mp4")  # in a call with clip0 and clip1
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(clips) + "\n")
    out = tmp_path / "o.jsonl"
    code = (f"from tests.services.test_caption_dataset_faults import run_poisoned; "
            f"run_poisoned({str(listing)!r}, {str(out)!r}, {str(weights)!r})")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = tmp_path / "job.log"
    with open(log, "w") as f:  # its own process group: a hang is killed with Ray's processes
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=tmp_path, start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=480)  # without a bound on retries the job never ends
    except subprocess.TimeoutExpired:
        pytest.fail("the job looped on the clip that kills its actor\n" + log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "REPORT 6 1" in log.read_text()
    rows = {r["path"]: r for r in _jsonl(out)}
    assert sorted(rows) == sorted(clips)  # one row each: the poison's call mates were redone
    assert "process died captioning this clip alone" in rows["/data/poison.mp4"]["error"]
    assert all(rows[p]["caption"] == f"{PROMPT} {Path(p).name}" for p in clips if "clip" in p)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.e2e
def test_a_rerun_retries_error_rows_and_a_bad_file_name_is_a_row(local_ray, tmp_path,
                                                                  monkeypatch, capsys):  # fmt: skip
    monkeypatch.setattr(cd, "ClipCaptioner", NameCaptioner)
    weights = _weights(tmp_path / "w")
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (folder / name).write_bytes(b"x")
    latin = os.path.join(os.fsencode(folder), b"caf\xe9.mp4")  # a Latin-1 name
    with open(latin, "wb") as f:
        f.write(b"x")
    out = tmp_path / "o.jsonl"
    row = dict.fromkeys(FIELDS) | {"frames_used": 1, "seconds": 0.1, "prompt": PROMPT}
    out.write_text("".join(json.dumps(r) + "\n" for r in [  # an earlier run's rows
        row | {"path": str(folder / "a.mp4"), "caption": "earlier"},
        row | {"path": str(folder / "b.mp4"), "error": "OSError: connection reset"},
    ]))  # fmt: skip
    job = cd.DatasetJob(str(folder), out, str(weights), prompt=PROMPT, clips_per_call=2)
    report = cd.run_job(job, log=lambda _: None)
    assert (report.listed, report.skipped, report.captioned, report.errors) == (4, 1, 3, 1)
    rows = {r["path"]: r for r in _jsonl(out)}
    shown = str(folder) + "/caf\\xe9.mp4"
    assert sorted(rows) == sorted([str(folder / n) for n in ("a.mp4", "b.mp4", "c.mp4")] + [shown])
    assert rows[str(folder / "a.mp4")]["caption"] == "earlier"  # done: skipped
    assert rows[str(folder / "b.mp4")]["caption"] == f"{PROMPT} b.mp4"  # the error row: replaced
    assert rows[str(folder / "b.mp4")]["error"] is None
    assert "not UTF-8" in rows[shown]["error"] and "caf\\xe9.mp4" in rows[shown]["error"]
    again = cd.run_job(job, log=lambda _: None)  # only the bad name is left: it stays one row
    assert (again.skipped, again.captioned, again.errors) == (3, 1, 1)
    assert sorted(r["path"] for r in _jsonl(out)) == sorted(rows)
    args = [str(folder), str(out), "--weights", str(weights), "--prompt", "Other."]
    assert main(args) == 2  # OUTPUT's settings were recorded by the first run
    assert "prompt: OUTPUT has 'Describe.', this run 'Other.'" in capsys.readouterr().err
