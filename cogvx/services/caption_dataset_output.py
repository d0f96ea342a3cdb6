"""The caption dataset's OUTPUT, written so that a killed run keeps what it finished.

- JSONL: each batch is appended and fsynced; a last line cut off by a kill (one that does not
  parse) is dropped on opening; a complete last row without its newline is kept.
- Parquet: each batch is one part file in `<OUTPUT>.parts/` (written under a temporary name,
  then renamed); `finish` merges OUTPUT and the parts (one row per path) into OUTPUT and removes
  the folder. Opening reads OUTPUT and any parts a killed run left.

One row per path, the newest wins: a rerun captions again the clips whose row is an error and
appends their new rows; `finish` then keeps only the newest row of each path (until it runs, a
killed rerun may leave both; opening reads the newest). `.done` is the set of paths whose
newest row has no error: the job skips those.

Beside OUTPUT: `<OUTPUT>.settings.json` holds the settings its rows were made with (a rerun with
other settings is refused, `check_settings`), and `.<OUTPUT>.lock` is locked (`fcntl.flock`) by
the job writing OUTPUT, so that a second job on the same OUTPUT is refused (`output_lock`).
pyarrow is imported inside functions, so importing this module does not need it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from cogvx.checks import shown
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


def shown_path(path: str) -> str:
    """`path` as its row names it: itself, or for a file name that is not UTF-8 (surrogate
    escapes) its bytes, those that do not decode as \\xNN escapes."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return ascii(path)[1:-1]


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
        self.done: set[str] = set()  # paths whose newest row has no error
        self.rows: set[str] = set()  # paths with a row
        self.superseded = False  # some path has more than one row: `finish` keeps the newest
        self._recover()

    def _note(self, path: str, error: Any) -> None:
        self.superseded |= path in self.rows
        self.rows.add(path)
        if error is None:
            self.done.add(path)
        else:
            self.done.discard(path)

    def _recover(self) -> None:
        if not self.path.exists():
            return
        good, unended = 0, False
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    good += len(line)
                    continue
                try:
                    row = json.loads(line)
                    path = row["path"]
                except (ValueError, KeyError, TypeError):
                    path = None
                if not isinstance(path, str):
                    if f.read().strip():  # not the last line: not a torn write
                        raise InputError(
                            f"OUTPUT {self.path} line {number} is not a caption row (JSON with a "
                            "'path'); move the file away or fix that line"
                        )
                    break
                self._note(path, row.get("error"))
                good += len(line)
                unended = not line.endswith(b"\n")
        if good < self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good)
            self.dropped_torn_line = True
        elif unended:  # a complete last row: end it, so that the next row starts a line
            self.write_bytes(b"\n")

    def write_bytes(self, data: bytes) -> None:
        """Append `data`, then fsync."""
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append rows, then fsync (a kill keeps every row this returned for)."""
        self.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        for r in rows:
            self._note(r["path"], r.get("error"))

    def finish(self, order: list[str] | None) -> None:
        """Rewrite OUTPUT with the newest row of each path, in `order` (rows of other paths after
        them) if an order is asked; left as it is when neither is needed."""
        if not self.path.exists() or (order is None and not self.superseded):
            return
        lines: dict[str, str] = {}
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    path = json.loads(line)["path"]
                    lines.pop(path, None)  # the newest row wins, where it was written
                    lines[path] = line if line.endswith("\n") else line + "\n"
        first = [lines.pop(p) for p in order or [] if p in lines]

        def write(tmp: Path) -> None:
            tmp.write_text("".join(first + list(lines.values())), encoding="utf-8")

        _replace_atomically(self.path, write)
        self.superseded = False


class ParquetSink:
    """OUTPUT.parquet: a part file per batch in OUTPUT.parts/, merged into OUTPUT at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts = path.with_name(path.name + ".parts")
        for stale in self.parts.glob(".*.tmp*"):
            stale.unlink()
        ok: dict[str, bool] = {}  # path -> its newest row has no error
        for t in self._tables():
            for p, error in zip(t["path"].to_pylist(), t["error"].to_pylist(), strict=True):
                ok[p] = error is None
        self.done = {p for p, good in ok.items() if good}
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
        """Merge OUTPUT and the parts into OUTPUT, one row per path (the newest), then drop the
        parts; with `order`, rows in that order (rows of other paths after them)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._part_files() and (order is None or not self.path.exists()):
            shutil.rmtree(self.parts, ignore_errors=True)
            return
        tables = self._tables()
        table = pa.concat_tables(tables) if tables else rows_table([])
        newest: dict[str, int] = {}
        for i, p in enumerate(table["path"].to_pylist()):
            newest[p] = i
        rank = {p: i for i, p in enumerate(order or [])}
        keep = sorted(newest.items(), key=lambda item: (rank.get(item[0], len(rank)), item[1]))
        merged = table.take([i for _, i in keep])
        _replace_atomically(self.path, lambda tmp: pq.write_table(merged, tmp))
        shutil.rmtree(self.parts, ignore_errors=True)


def check_output(output: Path) -> None:
    """Refuse an OUTPUT that cannot be one (suffix, a folder, below a file); creates nothing."""
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise InputError(
            f"OUTPUT {clip(str(output))} must end in {' or '.join(OUTPUT_SUFFIXES)}; "
            f"got {suffix or 'no suffix'}"
        )
    if output.is_dir():
        raise InputError(f"OUTPUT {clip(str(output))} is a folder")
    above = output.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise InputError(f"OUTPUT {clip(str(output))} cannot be created: {above} is not a folder")


def _creating(output: Path, make: Callable[[], Any]) -> Any:
    try:
        return make()
    except OSError as exc:
        raise InputError(
            f"OUTPUT {clip(str(output))} cannot be written: {exc.strerror or exc} "
            f"({exc.filename or output})"
        ) from exc


@contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUTPUT (on `.<name>.lock` beside it, which stays) while the
    block runs; InputError at once if another job holds it. Creates OUTPUT's folder."""
    check_output(output)
    lock = output.with_name(f".{output.name}.lock")
    _creating(output, lambda: output.parent.mkdir(parents=True, exist_ok=True))
    fd = _creating(output, lambda: os.open(lock, os.O_RDWR | os.O_CREAT, 0o644))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"OUTPUT {clip(str(output))} is being written by another caption job (it holds "
                f"{lock}); wait for that job to end, or choose another OUTPUT"
            ) from None
        yield
    finally:
        os.close(fd)


def settings_path(output: Path) -> Path:
    """The file beside OUTPUT with the settings its rows were made with."""
    return output.with_name(output.name + ".settings.json")


def check_settings(output: Path, settings: dict[str, Any]) -> None:
    """Refuse to add rows made with `settings` to an OUTPUT made with others (InputError naming
    each difference); record `settings` beside an OUTPUT that has no record of them (a new one,
    or one an older version wrote)."""
    side = settings_path(output)
    has_rows = output.exists() or output.with_name(output.name + ".parts").exists()
    if side.exists() and has_rows:
        try:
            old = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{side} is not a settings file ({exc}); move it away") from exc
        if not isinstance(old, dict):
            raise InputError(f"{side} is not a settings file (not a JSON object); move it away")
        differ = [k for k in sorted(settings.keys() | old.keys()) if old.get(k) != settings.get(k)]
        if differ:
            said = "; ".join(
                f"{k}: OUTPUT has {shown(old.get(k))}, this run {shown(settings.get(k))}"
                for k in differ
            )
            raise InputError(
                f"OUTPUT {clip(str(output))} holds rows made with other settings ({said}); rerun "
                f"with its settings to resume, choose another OUTPUT, or delete {side} to mix them"
            )
        return
    text = json.dumps(settings, indent=1, sort_keys=True, ensure_ascii=False) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    _creating(output, lambda: _replace_atomically(side, write))


def open_sink(output: Path) -> JsonlSink | ParquetSink:
    """The writer for OUTPUT by its suffix, with what it already holds in `.done`."""
    check_output(output)
    _creating(output, lambda: output.parent.mkdir(parents=True, exist_ok=True))
    for stale in output.parent.glob(f".{output.name}.tmp-*"):  # a rewrite a kill cut short
        stale.unlink()
    return JsonlSink(output) if output.suffix.lower() == ".jsonl" else ParquetSink(output)
