"""Writers of :mod:`peft_tags.tablefiles`: a chunk of rows and their tags as a file of its own, and
the chunks merged in order into the output."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from ..errors import UserError, one_line
from . import ROW_GROUP, TAGS, Chunk, Scan


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)  # dates, decimals, bytes of Parquet as text


def make_writer(fmt: str, scan: Scan) -> "Writer":
    return {"jsonl": JsonlWriter, "csv": CsvWriter, "parquet": ParquetWriter}[fmt](scan)


class Writer:
    """Writes chunks (rows and the tags of each, as lists of dicts) and merges them in order."""

    def __init__(self, scan: Scan):
        self.fields = [k for k in scan.fields if k != TAGS]
        self.scan = scan

    def write_chunk(self, path: Path, chunk: Chunk, tags: list[list[dict]]) -> None:
        path.write_bytes(self.encode(chunk, tags))

    def encode(self, chunk: Chunk, tags) -> bytes:
        raise NotImplementedError

    def header(self) -> bytes:
        return b""

    def merge(self, parts: list[Path], dest: Path) -> None:
        """``dest`` (created or truncated) = the header and every part, in order."""
        with open(dest, "wb") as out:
            out.write(self.header())
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)


class JsonlWriter(Writer):
    """An object per line: the input row's fields, then 'tags' (a list of objects)."""

    def encode(self, chunk, tags) -> bytes:
        lines = []
        for row, t in zip(chunk.dicts(), tags):
            obj = {k: v for k, v in row.items() if k != TAGS}
            obj[TAGS] = t
            lines.append(_json(obj) + "\n")
        return "".join(lines).encode("utf-8")


class CsvWriter(Writer):
    """A header row, then the input row's fields and 'tags' (its list of objects as JSON text)."""

    @staticmethod
    def _cell(v) -> str:
        return "" if v is None else v if isinstance(v, str) else _json(v)

    def _rows(self, rows) -> bytes:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerows(rows)
        return buf.getvalue().encode("utf-8")

    def header(self) -> bytes:
        return self._rows([self.fields + [TAGS]])

    def encode(self, chunk, tags) -> bytes:
        return self._rows([[self._cell(row.get(k)) for k in self.fields] + [_json(t)]
                           for row, t in zip(chunk.dicts(), tags)])


class ParquetWriter(Writer):
    """The input's columns (their types kept; inferred for JSON lines, strings for CSV), then
    'tags': a string column holding each title's list of tags as JSON text."""

    def __init__(self, scan: Scan):
        import pyarrow as pa

        super().__init__(scan)
        self.pa = pa
        self.schema = scan.schema.append(pa.field(TAGS, pa.string()))

    def _table(self, chunk: Chunk, tags):
        pa = self.pa
        rows = chunk.rows
        if isinstance(rows, list):
            table = pa.Table.from_pylist(rows, schema=self.scan.schema)
        else:
            table = rows.replace_schema_metadata(None)
            if TAGS in table.column_names:
                table = table.drop_columns([TAGS])
        return table.append_column(TAGS, pa.array([_json(t) for t in tags], pa.string())).cast(self.schema)

    def write_chunk(self, path: Path, chunk: Chunk, tags) -> None:
        import pyarrow.parquet as pq

        try:
            table = self._table(chunk, tags)
        except (self.pa.ArrowException, ValueError, TypeError, OverflowError) as e:
            raise UserError(f"chunk {chunk.index + 1} of the input does not fit the Parquet columns ({one_line(e)}); "
                            "write JSON lines or CSV instead") from None
        pq.write_table(table, path)

    def merge(self, parts: list[Path], dest: Path) -> None:
        import pyarrow.parquet as pq

        pending, rows = [], 0
        with pq.ParquetWriter(dest, self.schema) as w:
            for p in parts:
                t = pq.read_table(p).replace_schema_metadata(None)
                pending.append(t)
                rows += t.num_rows
                if rows >= ROW_GROUP:
                    w.write_table(self.pa.concat_tables(pending), row_group_size=ROW_GROUP)
                    pending, rows = [], 0
            if pending or not parts:
                w.write_table(self.pa.concat_tables(pending) if pending else self.schema.empty_table())
