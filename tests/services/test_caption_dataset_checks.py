"""The dataset tool's checks and OUTPUT bookkeeping, without Ray: list files (encoding, relative
entries), globs through symbolic links, OUTPUT's settings record and lock, rows a rerun retries
and the newest row of a path winning, and that nothing is created before every input is
checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cogvx.errors import InputError
from cogvx.services.caption_dataset import DatasetJob, list_inputs, run_job
from cogvx.services.caption_dataset_output import (
    FIELDS,
    JsonlSink,
    ParquetSink,
    check_settings,
    open_sink,
    output_lock,
    settings_path,
    shown_path,
)
from tools.caption_dataset import main


def _weights(folder: Path) -> Path:
    """A folder that passes the driver's weights check (the model itself is never loaded)."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _clips(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"not decoded here")
    return [folder / name for name in names]


def _row(path: str, error: str | None = None, caption: str = "old") -> dict:
    return dict.fromkeys(FIELDS) | {"path": path, "caption": None if error else caption,
                                    "frames_used": 1, "seconds": 0.1, "error": error}  # fmt: skip


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- INPUT ----


def test_a_list_file_that_is_not_utf8_is_refused_by_name(tmp_path, capsys):
    listing = tmp_path / "clip.ts"  # a video under a suffix the tool does not know
    listing.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"clip\.ts is a list file that is not UTF-8 text"):
        list_inputs(str(listing))
    weights = _weights(tmp_path / "w")
    assert main([str(listing), str(tmp_path / "o.jsonl"), "--weights", str(weights)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


def test_list_file_entries_are_relative_to_its_folder(tmp_path, monkeypatch):
    a, b = _clips(tmp_path / "data", "a.mp4", "b.mp4")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"a.mp4\n./sub/../b.mp4\n{a}\n")
    monkeypatch.chdir(tmp_path)  # not the list file's folder
    assert list_inputs(str(listing)) == [str(a), str(b)]
    assert list_inputs("data/list.txt") == [str(a), str(b)]  # a relative list file, too


def test_a_recursive_glob_ends_on_symlink_loops_and_lists_a_file_once(tmp_path):
    root = tmp_path / "clips"
    (clip,) = _clips(root / "d", "a.mp4")
    (root / "d" / "loop").symlink_to("..")  # d/loop -> clips: a loop
    (root / "b.mp4").symlink_to(clip)  # a second name for the same file
    (root / "e").mkdir()
    (root / "e" / "c.mp4").write_bytes(b"x")
    (root / "d" / "up").symlink_to(root / "e")  # a link to a folder: not followed
    once = [str(root / "b.mp4"), str(root / "e/c.mp4")]
    assert list_inputs(str(root / "**" / "*.mp4")) == once
    assert list_inputs(str(root / "d" / "**")) == [str(root / "d/a.mp4")]
    assert list_inputs(str(root)) == once


# ---- OUTPUT ----


def test_nothing_is_created_before_every_input_is_checked(tmp_path):
    weights = _weights(tmp_path / "w")
    deep = tmp_path / "new" / "deep" / "o.jsonl"
    assert main([str(tmp_path / "nowhere"), str(deep), "--weights", str(weights)]) == 2
    (clip,) = _clips(tmp_path / "c", "a.mp4")
    assert main([str(clip), str(deep), "--weights", str(tmp_path / "nope")]) == 1
    assert not (tmp_path / "new").exists()
    torn = tmp_path / "torn.jsonl"  # a torn line a bad rerun must leave alone
    torn.write_text(json.dumps(_row("/a.mp4")) + '\n{"path": "/b')
    before = torn.read_bytes()
    assert main([str(tmp_path / "nowhere"), str(torn), "--weights", str(weights)]) == 2
    assert torn.read_bytes() == before and not settings_path(torn).exists()


def test_an_output_below_a_file_is_refused_by_name(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    (clip,) = _clips(tmp_path / "c", "a.mp4")
    weights = _weights(tmp_path / "w")
    assert main([str(clip), str(tmp_path / "afile" / "o.jsonl"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "cannot be created" in err and "afile is not a folder" in err
    with pytest.raises(InputError, match="afile is not a folder"):
        open_sink(tmp_path / "afile" / "sub" / "o.parquet")


def test_a_complete_last_row_without_a_newline_is_kept(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps(_row("a")) + "\n" + json.dumps(_row("b")))  # no final newline
    sink = open_sink(out)
    assert isinstance(sink, JsonlSink) and sink.done == {"a", "b"} and not sink.dropped_torn_line
    sink.write([_row("c")])
    assert [r["path"] for r in _jsonl(out)] == ["a", "b", "c"]
    out.write_text(json.dumps(_row("a")) + "\n" + '{"path": "b", "capt')  # torn: dropped
    sink = open_sink(out)
    assert sink.done == {"a"} and isinstance(sink, JsonlSink) and sink.dropped_torn_line


def test_error_rows_are_not_done_and_the_newest_row_wins(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "o.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in [
        _row("a", error="OSError: reset"), _row("b"), _row("c", error="x"), _row("c"),
    ]))  # fmt: skip
    sink = open_sink(out)
    assert sink.done == {"b", "c"}  # a: retried; c: its newest row is captioned
    sink.write([_row("a", caption="new")])
    assert sink.done == {"a", "b", "c"}
    sink.finish(None)
    assert [(r["path"], r["caption"]) for r in _jsonl(out)] == [("b", "old"), ("c", "old"),
                                                                ("a", "new")]  # fmt: skip
    table = tmp_path / "o.parquet"
    sink = open_sink(table)
    sink.write([_row("a", error="OSError: reset"), _row("b")])
    again = open_sink(table)
    assert isinstance(again, ParquetSink) and again.done == {"b"}
    again.write([_row("a", caption="new")])
    again.finish(["a", "b"])
    rows = pq.read_table(table).to_pylist()
    got = [(r["path"], r["caption"], r["error"]) for r in rows]
    assert got == [("a", "new", None), ("b", "old", None)]


def test_settings_are_recorded_and_a_rerun_with_others_is_refused(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    settings = {"prompt": "Describe.", "strategy": "chat", "max_new_tokens": 6}
    check_settings(out, settings)  # no OUTPUT yet: recorded
    assert json.loads(settings_path(out).read_text()) == settings
    out.write_text(json.dumps(_row("a")) + "\n")
    check_settings(out, dict(settings))  # the same: resumes
    with pytest.raises(InputError) as err:
        check_settings(out, settings | {"prompt": "List objects.", "max_new_tokens": 7})
    text = str(err.value)
    assert "max_new_tokens: OUTPUT has 6, this run 7" in text
    assert "prompt: OUTPUT has 'Describe.', this run 'List objects.'" in text
    assert "strategy" not in text
    (clip,) = _clips(tmp_path / "c", "a.mp4")
    weights = _weights(tmp_path / "w")
    check_settings(out := tmp_path / "cli.jsonl", {"prompt": "Describe.", "strategy": "chat",
                                                   "max_new_tokens": 6, "model": "m",
                                                   "weights": str(weights)})  # fmt: skip
    out.write_text(json.dumps(_row(str(clip))) + "\n")
    before = out.read_bytes()
    args = [str(clip), str(out), "--weights", str(weights), "--max-new-tokens", "6"]
    assert main([*args, "--prompt", "Other."]) == 2
    err_text = capsys.readouterr().err
    assert "holds rows made with other settings" in err_text and "prompt: OUTPUT has" in err_text
    assert "model: OUTPUT has 'm'" in err_text and out.read_bytes() == before


def test_a_second_job_on_the_same_output_is_refused(tmp_path, capsys):
    (clip,) = _clips(tmp_path / "c", "a.mp4")
    weights = _weights(tmp_path / "w")
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps(_row(str(clip), error="x")) + "\n")
    before = out.read_bytes()
    with output_lock(out):  # the first job, still writing
        assert main([str(clip), str(out), "--weights", str(weights)]) == 2
        assert "is being written by another caption job" in capsys.readouterr().err
        with pytest.raises(InputError, match="another caption job"):
            run_job(DatasetJob(str(clip), out, str(weights)))
    assert out.read_bytes() == before
    with output_lock(out):  # released: the next job takes it
        pass


def test_a_file_name_that_is_not_utf8_is_shown_with_its_bytes_escaped():
    name = os.fsdecode(b"/clips/caf\xe9.mp4")
    assert shown_path(name) == "/clips/caf\\xe9.mp4"
    assert shown_path("/clips/café.mp4") == "/clips/café.mp4"
