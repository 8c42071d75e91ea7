"""Batch inputs and outputs: CSV, JSONL and Parquet, read in chunks, written resumably.

Readers yield one ``Row`` per input row, in order, with either the raw values
of the fields the model's input kind needs (admitted later, by the same rules
as every mode: ``runtime/admission.py``) or the reason the line cannot be read
at all (malformed CSV or JSON). Writers append to a file that can be cut back to
the last checkpoint (CSV, JSONL) or add one part file per chunk (Parquet).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from joules.errors import DataError
from joules.runtime.reasons import invalid_utf8

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def detect_format(path: Path, given: str | None = None) -> str:
    if given:
        if given not in FORMATS:
            raise DataError(f"unknown format {given!r}; formats are {list(FORMATS)}")
        return given
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {str(path)!r} from its extension {path.suffix!r}; "
            f"use .csv, .jsonl or .parquet, or pass --input-format/--output-format"
        )
    return fmt


@dataclass(frozen=True)
class Row:
    index: int  # 0-based position among the input's rows
    id: Any
    fields: dict[str, Any] | None  # field name -> the raw value read (absent when the file has none)
    error: str | None = None
    line: int | None = None


def _bad_utf8(value: str) -> bool:
    """Text decoded with surrogateescape carries lone surrogates where bytes were not UTF-8."""
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def read_rows(path: Path, fmt: str, columns: Mapping[str, str], id_column: str, *, skip: int = 0) -> Iterator[Row]:
    """Every input row from the ``skip``-th on; ``columns`` maps each field the model needs to its column."""
    if not path.is_file():
        raise DataError(f"input file {str(path)!r} does not exist")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[fmt]
    return reader(path, dict(columns), id_column, skip)


def _need(path: Path, header: Sequence[str], columns: Mapping[str, str]) -> None:
    absent = [c for c in columns.values() if c not in header]
    if absent:
        raise DataError(
            f"{path}: no {', '.join(repr(c) for c in absent)} column; columns are {list(header)} (use --text-column)"
        )


class _Lines:
    """The file's lines for ``csv.reader``, keeping those of the record being read, so that a record
    that runs into the next lines (an unterminated quote) can be reported and its lines read again."""

    def __init__(self, f: Iterator[str]) -> None:
        self.f = f
        self.again: deque[tuple[int, str]] = deque()
        self.record: list[tuple[int, str]] = []
        self.number = 0  # of the last line read from the file

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.again:
            item = self.again.popleft()
        else:
            item = (self.number + 1, next(self.f))
            self.number += 1
        self.record.append(item)
        return item[1]

    def retry_after_first(self) -> int:
        """Hand the current record's lines after its first one out again; return the first one's number."""
        first, rest = self.record[0], self.record[1:]
        self.again.extendleft(reversed(rest))
        self.record = []
        return first[0]


def _read_csv(path: Path, columns: dict[str, str], id_column: str, skip: int) -> Iterator[Row]:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        # strict: a quote that is not closed where a field ends is an error, not a field that swallows
        # the next lines (the rows after it) up to the next quote.
        reader = csv.reader(lines, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}: cannot read the CSV header: {e}") from None
        header = [h.lstrip("\ufeff") if i == 0 else h for i, h in enumerate(header)]
        _need(path, header, columns)
        at = {name: header.index(column) for name, column in columns.items()}
        k = header.index(id_column) if id_column in header else None
        index = 0
        while True:
            lines.record = []
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                # The record's first line is the bad one; the lines it ran into are rows of their own.
                spanned, last = len(lines.record), lines.record[-1][0] if lines.record else lines.number
                line = lines.retry_after_first() if lines.record else lines.number
                reader = csv.reader(lines, strict=True)
                if index >= skip:
                    unterminated = spanned > 1 or "end of data" in str(e)
                    why = f"an unterminated quote (its field ran on to line {last})" if unterminated else e
                    yield Row(index, index, None, f"malformed CSV line: {why}", line)
                index += 1
                continue
            if not fields:
                continue  # blank line: not a row
            if index >= skip:
                line = lines.record[-1][0] if lines.record else lines.number
                row_id = fields[k] if k is not None and k < len(fields) else index
                if len(fields) != len(header):
                    yield Row(
                        index,
                        row_id,
                        None,
                        f"malformed CSV line: {len(fields)} fields, the header has {len(header)}",
                        line,
                    )
                elif isinstance(row_id, str) and _bad_utf8(row_id):
                    yield Row(index, index, None, invalid_utf8(id_column), line)
                else:
                    yield Row(index, row_id, {name: fields[i] for name, i in at.items()}, None, line)
            index += 1


def _read_jsonl(path: Path, columns: dict[str, str], id_column: str, skip: int) -> Iterator[Row]:
    with path.open("rb") as f:
        index = 0
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if index < skip:
                index += 1
                continue
            try:
                # Bytes that are not UTF-8 stay lone surrogates in the values, for admission to
                # refuse with the reason every mode gives (the field is named there).
                obj = json.loads(raw.decode("utf-8", "surrogateescape"))
            except json.JSONDecodeError as e:
                yield Row(index, index, None, f"malformed JSON: {e.msg} at column {e.colno}", line_no)
            else:
                if not isinstance(obj, dict):
                    yield Row(index, index, None, f"expected a JSON object, got {type(obj).__name__}", line_no)
                else:
                    row_id = obj.get(id_column, index)
                    if isinstance(row_id, str) and _bad_utf8(row_id):
                        yield Row(index, index, None, invalid_utf8(id_column), line_no)
                    else:
                        values = {name: obj[c] for name, c in columns.items() if c in obj}
                        yield Row(index, row_id, values, None, line_no)
            index += 1


def _read_parquet(path: Path, columns: dict[str, str], id_column: str, skip: int) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError variants
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    names = pf.schema_arrow.names
    _need(path, names, columns)
    wanted = list(dict.fromkeys([*columns.values(), *([id_column] if id_column in names else [])]))
    index = 0
    for batch in pf.iter_batches(batch_size=4096, columns=wanted):
        if index + batch.num_rows <= skip:
            index += batch.num_rows
            continue
        data = {c: batch.column(i).to_pylist() for i, c in enumerate(wanted)}
        ids = data.get(id_column)
        for j in range(batch.num_rows):
            if index >= skip:
                row_id = ids[j] if ids is not None else index
                # binary values stay bytes: admission decodes them (strict UTF-8) like a Redis field
                yield Row(index, row_id, {name: data[c][j] for name, c in columns.items()})
            index += 1


# -- writers ----------------------------------------------------------------------------------------


class ResultWriter(Protocol):
    def write(self, rows: Sequence[dict[str, Any]]) -> None: ...
    def commit(self) -> int:
        """Make everything written durable; return the position to record in the checkpoint."""
        ...

    def close(self) -> None: ...
    def finish(self, final: Path) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _AppendWriter:
    """An append-only file, cut back to ``position`` on open (the last checkpoint)."""

    def __init__(self, path: Path, position: int) -> None:
        self.path = path
        self.f = path.open("r+b" if path.exists() else "w+b")
        self.f.truncate(position)
        self.f.seek(position)
        self.text = io.TextIOWrapper(self.f, encoding="utf-8", newline="", write_through=True)

    def commit(self) -> int:
        self.text.flush()
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()

    def close(self) -> None:
        if not self.text.closed:
            self.text.close()

    def finish(self, final: Path) -> None:
        self.close()
        os.replace(self.path, final)
        _fsync_dir(final.parent)


class CsvWriter(_AppendWriter):
    def __init__(self, path: Path, position: int, columns: list[str]) -> None:
        super().__init__(path, position)
        self.columns = columns
        self.csv = csv.writer(self.text)
        if position == 0:
            self.csv.writerow(columns)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self.csv.writerows([r.get(c) for c in self.columns] for r in rows)


class JsonlWriter(_AppendWriter):
    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self.text.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


INT64 = (-(2**63), 2**63 - 1)


def _int64(value: Any) -> bool:
    return value is None or (type(value) is int and INT64[0] <= value <= INT64[1])


def _id_text(value: Any) -> str | None:
    """An id as Parquet stores it when the ids are not all int64: strings as they are, others as JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class ParquetWriter:
    """One part file per chunk in ``<output>.parts/``; merged into one file at the end.

    The id column (the first) is int64 when every id of the job is a whole number within int64, and
    strings otherwise (ids from JSONL may mix types, or exceed int64): a part whose ids are not all
    int64 stores them as strings, and the merge turns every part's ids into strings then.
    """

    def __init__(self, parts_dir: Path, parts_done: int, columns: list[str]) -> None:
        self.dir = parts_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("part-*.parquet*"):
            if not stale.name.endswith(".parquet") or int(stale.name[5:11]) >= parts_done:
                stale.unlink()
        self.parts = parts_done
        self.columns = columns
        self.pending: list[dict[str, Any]] = []

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self.pending.extend(rows)

    def commit(self) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.pending:
            key = self.columns[0]
            rows = self.pending
            if not all(_int64(r.get(key)) for r in rows):
                rows = [{**r, key: _id_text(r.get(key))} for r in rows]
            table = pa.Table.from_pylist(rows)
            tmp = self.dir / f"part-{self.parts:06d}.parquet.tmp"
            pq.write_table(table, tmp)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / f"part-{self.parts:06d}.parquet")
            _fsync_dir(self.dir)
            self.parts += 1
            self.pending = []
        return self.parts

    def close(self) -> None:
        self.pending = []

    def finish(self, final: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = sorted(self.dir.glob("part-*.parquet"))
        tmp = final.with_name(final.name + ".tmp")
        schema = self._merged_schema(parts)
        writer = None
        try:
            for part in parts:
                table = pq.read_table(part)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(table.cast(schema) if table.schema != schema else table)
            if writer is None:  # no scored rows at all: an empty file with the result columns
                pq.write_table(pa.table({c: pa.array([], pa.string()) for c in self.columns}), tmp)
        finally:
            if writer is not None:
                writer.close()
        os.replace(tmp, final)
        shutil.rmtree(self.dir)
        _fsync_dir(final.parent)

    def _merged_schema(self, parts: Sequence[Path]) -> Any:
        """One schema for every part: nulls promoted to the type found elsewhere, ids as strings when any
        part holds them as strings."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not parts:
            return None
        schemas = [pq.read_schema(p) for p in parts]
        key = self.columns[0]
        if any(
            key in s.names and not (pa.types.is_integer(s.field(key).type) or pa.types.is_null(s.field(key).type))
            for s in schemas
        ):
            schemas = [
                s.set(s.get_field_index(key), pa.field(key, pa.string())) if key in s.names else s for s in schemas
            ]
        return pa.unify_schemas(schemas, promote_options="permissive")


def result_writer(fmt: str, path: Path, position: int, columns: list[str]) -> ResultWriter:
    """The writer of output format ``fmt`` that appends to ``path`` from ``position`` on (see each writer)."""
    if fmt == "csv":
        return CsvWriter(path, position, columns)
    if fmt == "jsonl":
        return JsonlWriter(path, position)
    return ParquetWriter(path, position, columns)
