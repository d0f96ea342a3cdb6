"""The caption dataset's OUTPUT, written so that a killed run keeps what it finished.

- JSONL: each batch is appended and fsynced; a line cut off by a kill is dropped on opening.
- Parquet: each batch is one part file in `<OUTPUT>.parts/` (written under a temporary name,
  then renamed); `finish` merges OUTPUT and the parts (one row per path, the first kept) into
  OUTPUT and removes the folder. Opening reads OUTPUT and any parts a killed run left.

`.done` is the set of paths already written: the job skips them. pyarrow is imported inside
functions, so importing this module does not need it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from cogvx.errors import InputError
from cogvx.log import clip
from cogvx.services.caption_batch import CaptionRow

OUTPUT_SUFFIXES = (".jsonl", ".parquet")
FIELDS = tuple(f.name for f in fields(CaptionRow))


def row_schema() -> Any:
    """The pyarrow schema of a caption row (CaptionRow's fields)."""
    import pyarrow as pa

    types = {"frames_used": pa.int64(), "duration": pa.float64(), "seconds": pa.float64()}
    return pa.schema([(name, types.get(name, pa.string())) for name in FIELDS])


def rows_table(rows: list[dict[str, Any]]) -> Any:
    """Rows as a pyarrow table of `row_schema()`."""
    import pyarrow as pa

    return pa.Table.from_pylist(rows, schema=row_schema())


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class JsonlSink:
    """OUTPUT.jsonl: appended a batch at a time; a torn last line is dropped on opening."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dropped_torn_line = False
        self.done = self._recover()

    def _recover(self) -> set[str]:
        done: set[str] = set()
        if not self.path.exists():
            return done
        good = 0
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    good += len(line)
                    continue
                try:
                    path = json.loads(line)["path"] if line.endswith(b"\n") else None
                except (ValueError, KeyError, TypeError):
                    path = None
                if not isinstance(path, str):
                    if f.read().strip():  # not the last line: not a torn write
                        raise InputError(
                            f"OUTPUT {self.path} line {number} is not a caption row (JSON with a "
                            "'path'); move the file away or fix that line"
                        )
                    break
                done.add(path)
                good += len(line)
        if good < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)
            self.dropped_torn_line = True
        return done

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows, then fsync (a kill keeps every row this returned for)."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def finish(self, order: list[str] | None) -> None:
        """Rewrite OUTPUT in `order` (rows of other paths after them), if an order is asked."""
        if order is None or not self.path.exists():
            return
        lines: dict[str, str] = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines.setdefault(json.loads(line)["path"], line)
        first = [lines.pop(p) for p in order if p in lines]

        def write(tmp: Path) -> None:
            tmp.write_text("".join(first + list(lines.values())), encoding="utf-8")

        _replace_atomically(self.path, write)


class ParquetSink:
    """OUTPUT.parquet: a part file per batch in OUTPUT.parts/, merged into OUTPUT at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        for stale in self.parts.glob(".*.tmp*"):
            stale.unlink()
        self.done = {p for t in self._tables() for p in t.column("path").to_pylist()}
        numbers = [int(p.stem.split("-")[1]) for p in self._part_files()]
        self.next = max(numbers, default=-1) + 1

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def _tables(self) -> list[Any]:
        import pyarrow.parquet as pq

        tables = []
        for f in ([self.path] if self.path.exists() else []) + self._part_files():
            try:
                table = pq.read_table(f)
                tables.append(table.select(list(FIELDS)).cast(row_schema()))
            except Exception as exc:  # noqa: BLE001 - said with the file's name
                raise InputError(f"OUTPUT {f} is not a caption table: {clip(str(exc))}") from exc
        return tables

    def write(self, rows: list[dict[str, Any]]) -> None:
        """One part file, complete or absent (written under a temporary name, then renamed)."""
        import pyarrow.parquet as pq

        self.parts.mkdir(exist_ok=True)
        part = self.parts / f"part-{self.next:06d}.parquet"
        _replace_atomically(part, lambda tmp: pq.write_table(rows_table(rows), tmp))
        self.next += 1

    def finish(self, order: list[str] | None) -> None:
        """Merge OUTPUT and the parts into OUTPUT, one row per path (first kept), then drop the
        parts; with `order`, rows in that order (rows of other paths after them)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._part_files() and (order is None or not self.path.exists()):
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        tables = self._tables()
        table = pa.concat_tables(tables) if tables else rows_table([])
        first: dict[str, int] = {}
        for i, p in enumerate(table["path"].to_pylist()):
            first.setdefault(p, i)
        rank = {p: i for i, p in enumerate(order or [])}
        keep = sorted(first.items(), key=lambda item: (rank.get(item[0], len(rank)), item[1]))
        merged = table.take([i for _, i in keep])
        _replace_atomically(self.path, lambda tmp: pq.write_table(merged, tmp))
        shutil.rmtree(self.parts, ignore_errors=True)


def open_sink(output: Path) -> JsonlSink | ParquetSink:
    """The writer for OUTPUT by its suffix, with what it already holds in `.done`."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(
            f"OUTPUT {clip(str(output))} must end in {' or '.join(OUTPUT_SUFFIXES)}; "
            f"got {suffix or 'no suffix'}"
        )
    if output.is_dir():
        raise InputError(f"OUTPUT {clip(str(output))} is a folder")
    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.name}.tmp-*"):  # a rewrite a kill cut short
        stale.unlink()
    return JsonlSink(output) if suffix == ".jsonl" else ParquetSink(output)
