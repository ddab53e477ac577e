"""Tables of titles for ``peft-tags predict``: JSON lines, CSV and Parquet, read and written in chunks.

Every format holds one title per row in a string field or column ``text``; the other fields
are passed through to the output row, which gets one more, ``tags`` (an input field of that
name is replaced). The format comes from the extension (``.jsonl``/``.ndjson``, ``.csv``,
``.parquet``/``.pq``) unless given.

A :class:`Reader` goes through its file twice, each time in constant memory: :meth:`Reader.scan`
checks every row (a mistake is one UserError line ``path:line: what``, or ``path: row N:`` for
Parquet) and counts them, so that nothing is written for a file that would fail half-way;
:meth:`Reader.chunks` then yields the chunks asked for. A :class:`Writer` writes one chunk as a
file of its own and :meth:`Writer.merge` puts those files together: JSON lines and CSV chunks
are byte ranges of the output, Parquet chunks small Parquet files. pyarrow is imported only for
Parquet. Writers are in :mod:`peft_tags.tablefiles.writers`.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data import check_title
from ..errors import UserError, one_line

TEXT, TAGS = "text", "tags"
FORMATS = ("jsonl", "csv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SCAN_BATCH = 2048  # rows per step of a scan (Parquet schema inference of JSON lines)
ROW_GROUP = 65536  # rows per row group of a merged Parquet file


def format_of(path, given: str | None, key: str) -> str:
    """The format of ``path``: ``given`` (``--input-format``), else from its extension."""
    if given:
        return given
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise UserError(f"{key}: cannot tell the format of '{path}' from its extension; name it "
                        f"{', '.join(EXTENSIONS)}, or give {key}-format {'|'.join(FORMATS)}")
    return fmt


@dataclass
class Scan:
    rows: int  # titles in the file
    fields: list[str] = field(default_factory=list)  # passthrough fields in first-seen order, 'text' among them
    schema: object = None  # pyarrow schema of the passthrough fields, when asked for (Parquet output)


@dataclass
class Chunk:
    index: int
    titles: list[str]
    rows: object  # list of dicts (JSON lines, CSV, titles), or a pyarrow Table (Parquet)

    def dicts(self) -> list[dict]:
        return self.rows if isinstance(self.rows, list) else self.rows.to_pylist()


def open_reader(path: Path, fmt: str) -> "Reader":
    if not path.is_file():
        raise UserError(f"--input: no such file '{path}'")
    return {"jsonl": JsonlReader, "csv": CsvReader, "parquet": ParquetReader}[fmt](path)


class Reader:
    path: Path

    def scan(self, schema: bool = False) -> Scan:
        raise NotImplementedError

    def chunks(self, size: int, wanted) -> "iter[Chunk]":
        """The chunks of ``size`` rows (the last one shorter) whose index is in ``wanted``, in order."""
        raise NotImplementedError


def _decoded(path: Path):
    """(line number, text) of each line of ``path``, or a UserError naming the line not in UTF-8."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise UserError(f"{path}:{n}: not UTF-8 (byte {e.start + 1})") from None


class _Fields:
    """The union of field names in first-seen order, and (``schema``) their pyarrow types."""

    def __init__(self, path: Path, schema: bool):
        self.path, self.names, self.want, self.schema, self.rows, self.first = path, {}, schema, None, [], 0

    def add(self, n: int, row: dict) -> None:
        for k in row:
            self.names.setdefault(k, None)
        if self.want:
            self.first = self.first or n
            self.rows.append(row)
            if len(self.rows) == SCAN_BATCH:
                self.flush(n)

    def flush(self, last: int) -> None:
        if not self.rows:
            return
        import pyarrow as pa

        names = {k: None for row in self.rows for k in row if k != TAGS}
        try:
            part = pa.schema([(k, pa.array([row.get(k) for row in self.rows]).type) for k in names])
            self.schema = part if self.schema is None else pa.unify_schemas([self.schema, part],
                                                                             promote_options="permissive")
        except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            raise UserError(f"{self.path}:{self.first}-{last}: the fields do not fit one Parquet column type each "
                            f"({one_line(e)}); write JSON lines or CSV instead") from None
        self.rows, self.first = [], 0

    def done(self, rows: int, last: int) -> Scan:
        self.flush(last)
        return Scan(rows, list(self.names), self.schema)


class JsonlReader(Reader):
    """An object per line with a string field 'text'; blank lines are skipped."""

    def __init__(self, path: Path):
        self.path = path

    def _row(self, n: int, line: str) -> dict:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{self.path}:{n}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise UserError(f"{self.path}:{n}: invalid JSON (nested too deeply)") from None
        text = obj.get(TEXT) if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{self.path}:{n}: expected an object with a string field 'text'")
        check_title(text, f"{self.path}:{n}")
        return obj

    def _lines(self):
        return ((n, line) for n, line in _decoded(self.path) if line.strip())

    def scan(self, schema: bool = False) -> Scan:
        fields, rows, last = _Fields(self.path, schema), 0, 0
        for last, line in self._lines():
            fields.add(last, self._row(last, line))
            rows += 1
        return fields.done(rows, last)

    def chunks(self, size: int, wanted):
        index, lines = 0, []
        for item in self._lines():
            lines.append(item)
            if len(lines) == size:
                yield from self._chunk(index, lines, wanted)
                index, lines = index + 1, []
        if lines:
            yield from self._chunk(index, lines, wanted)

    def _chunk(self, index, lines, wanted):
        if index in wanted:
            rows = [self._row(n, line) for n, line in lines]
            yield Chunk(index, [r[TEXT] for r in rows], rows)


class CsvReader(Reader):
    """A header row naming a 'text' column; every row has as many fields as the header."""

    def __init__(self, path: Path):
        self.path = path

    def _records(self):
        """The header, then (line, dict) per row; blank lines are skipped."""
        reader = csv.reader((line for _, line in _decoded(self.path)), strict=True)
        header = None
        try:
            for rec in reader:
                n = reader.line_num
                if not rec:
                    continue
                if header is None:
                    header = self._header(n, rec)
                    yield header
                    continue
                if len(rec) != len(header):
                    raise UserError(f"{self.path}:{n}: {len(rec)} fields, but the header has {len(header)}")
                row = dict(zip(header, rec))
                check_title(row[TEXT], f"{self.path}:{n}")
                yield n, row
        except csv.Error as e:
            raise UserError(f"{self.path}:{reader.line_num}: invalid CSV ({e})") from None
        if header is None:
            yield []

    def _header(self, n: int, rec: list[str]) -> list[str]:
        seen = set()
        for name in rec:
            if name in seen:
                raise UserError(f"{self.path}:{n}: the header names column '{name}' twice")
            seen.add(name)
        if TEXT not in seen:
            raise UserError(f"{self.path}:{n}: no 'text' column in the header (columns: {', '.join(rec)})")
        return rec

    def scan(self, schema: bool = False) -> Scan:
        records = self._records()
        header = next(records)
        rows = sum(1 for _ in records)
        out = Scan(rows, list(header))
        if schema:
            import pyarrow as pa

            out.schema = pa.schema([(k, pa.string()) for k in header if k != TAGS])
        return out

    def chunks(self, size: int, wanted):
        records = self._records()
        next(records)
        index, rows = 0, []
        for _, row in records:
            rows.append(row)
            if len(rows) == size:
                if index in wanted:
                    yield Chunk(index, [r[TEXT] for r in rows], rows)
                index, rows = index + 1, []
        if rows and index in wanted:
            yield Chunk(index, [r[TEXT] for r in rows], rows)


class ParquetReader(Reader):
    """A string column 'text' without nulls; read in batches (``ParquetFile.iter_batches``)."""

    def __init__(self, path: Path):
        self.path = path

    def _open(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            f = pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.path}: not a Parquet file ({one_line(e)})") from None
        names = f.schema_arrow.names
        if names.count(TEXT) != 1:
            raise UserError(f"{self.path}: " + ("no 'text' column" if TEXT not in names else "two columns 'text'")
                            + f" (columns: {', '.join(names)})")
        t = f.schema_arrow.field(TEXT).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise UserError(f"{self.path}: column 'text' holds {t}, expected strings")
        return f

    def _batches(self, f, size: int, columns=None):
        import pyarrow as pa

        try:
            yield from f.iter_batches(batch_size=size, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.path}: cannot read ({one_line(e)})") from None

    def scan(self, schema: bool = False) -> Scan:
        f = self._open()
        n = 0
        for batch in self._batches(f, 65536, [TEXT]):
            for text in batch.column(0).to_pylist():
                n += 1
                if text is None:
                    raise UserError(f"{self.path}: row {n}: 'text' is null")
                check_title(text, f"{self.path}: row {n}")
        s = f.schema_arrow.remove_metadata()
        if TAGS in s.names:
            s = s.remove(s.get_field_index(TAGS))
        return Scan(n, list(f.schema_arrow.names), s)

    def chunks(self, size: int, wanted):
        import pyarrow as pa

        f = self._open()
        index, parts, have = 0, [], 0
        for batch in self._batches(f, size):
            while batch.num_rows:
                take = min(size - have, batch.num_rows)
                parts.append(batch.slice(0, take))
                have, batch = have + take, batch.slice(take)
                if have == size:
                    if index in wanted:
                        yield self._chunk(pa, index, parts)
                    index, parts, have = index + 1, [], 0
        if parts and index in wanted:
            yield self._chunk(pa, index, parts)

    @staticmethod
    def _chunk(pa, index, parts) -> Chunk:
        table = pa.Table.from_batches(parts)
        return Chunk(index, table.column(TEXT).to_pylist(), table)


class TitlesReader(Reader):
    """Titles given on the command line, as rows ``{"text": title}``."""

    def __init__(self, titles: list[str]):
        self.path, self.titles = Path("(titles)"), [check_title(t, f"title {i}") for i, t in enumerate(titles, 1)]

    def scan(self, schema: bool = False) -> Scan:
        out = Scan(len(self.titles), [TEXT])
        if schema:
            import pyarrow as pa

            out.schema = pa.schema([(TEXT, pa.string())])
        return out

    def chunks(self, size: int, wanted):
        for index, start in enumerate(range(0, len(self.titles), size)):
            if index in wanted:
                part = self.titles[start:start + size]
                yield Chunk(index, part, [{TEXT: t} for t in part])


def make_writer(fmt: str, scan: Scan):
    from .writers import make_writer

    return make_writer(fmt, scan)
