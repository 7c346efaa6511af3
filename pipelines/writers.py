"""Streaming output of prediction records: CSV, JSON Lines, a JSON array, or a table.

Every writer takes the records of one photo at a time and flushes them, so a run that is
stopped keeps what it wrote (a JSON array is closed on normal end, errors and Ctrl-C).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, TextIO

from tqdm.auto import tqdm

#: Suffixes of the output files, one writer each.
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".json")


class RecordWriter(Protocol):
    """Writes records as they come."""

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """Write and flush the records of one photo."""

    def close(self) -> None:
        """Finish the output (e.g. close a JSON array)."""


class _CsvWriter:
    def __init__(self, stream: TextIO, columns: Sequence[str]):
        self._stream = stream
        self._writer = csv.DictWriter(stream, columns)
        self._writer.writeheader()

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self._writer.writerows(records)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class _JsonLinesWriter:
    def __init__(self, stream: TextIO, columns: Sequence[str]):
        self._stream = stream
        self._columns = columns

    def _dumps(self, record: dict[str, Any]) -> str:
        return json.dumps({column: record.get(column) for column in self._columns},
                          ensure_ascii=False, allow_nan=False)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        self._stream.writelines(self._dumps(record) + "\n" for record in records)
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()


class _JsonArrayWriter(_JsonLinesWriter):
    def __init__(self, stream: TextIO, columns: Sequence[str]):
        super().__init__(stream, columns)
        self._separator = "[\n"

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self._stream.write(self._separator + self._dumps(record))
            self._separator = ",\n"
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("[]\n" if self._separator == "[\n" else "\n]\n")
        self._stream.flush()


class TableWriter:
    """Prints records as aligned rows on stdout (above a progress bar, if any).

    Class predictions show the probability of the predicted class when the model has
    one; the face box is ``top,left,height,width``.
    """

    _WIDTHS = {"face": 4, "box": 19, "age": 5, "age_group": 9}

    def __init__(self, columns: Sequence[str], file_width: int):
        self._columns = ["file", "face", "box"] + [c for c in columns if not c.startswith("p_")]
        self._widths = {"file": max(file_width, 4), **self._WIDTHS}
        self._print(self._line({column: column for column in self._columns}) + "error")

    def _line(self, cells: dict[str, str]) -> str:
        return "".join(f"{cells.get(column, ''):<{self._widths.get(column, 16)}}  "
                       for column in self._columns)

    @staticmethod
    def _print(line: str) -> None:
        tqdm.write(line.rstrip(), file=sys.stdout)

    @staticmethod
    def _cell(record: dict[str, Any], column: str) -> str:
        value = record.get(column)
        if column == "box":
            return "" if "top" not in record else \
                ",".join(str(record[key]) for key in ("top", "left", "height", "width"))
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.1f}"
        proba = record.get(f"p_{column}_{value}")
        return str(value) if proba is None else f"{value} {proba:.2f}"

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            cells = {column: self._cell(record, column) for column in self._columns}
            self._print(self._line(cells) + (record.get("error") or ""))

    def close(self) -> None:
        sys.stdout.flush()


_FILE_WRITERS = {".csv": _CsvWriter, ".jsonl": _JsonLinesWriter, ".json": _JsonArrayWriter}


@contextmanager
def open_writer(out: str | os.PathLike, columns: Sequence[str]) -> Iterator[RecordWriter]:
    """A streaming writer for ``out`` by its suffix (see :data:`OUTPUT_SUFFIXES`).

    The output is finished (JSON array closed) even when the block raises.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in _FILE_WRITERS:
        raise ValueError(f"{out}: output must end in one of {OUTPUT_SUFFIXES}")
    with open(out, "w", encoding="utf-8", newline="" if suffix == ".csv" else None) as stream:
        writer = _FILE_WRITERS[suffix](stream, columns)
        try:
            yield writer
        finally:
            writer.close()
