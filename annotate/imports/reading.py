"""Reading a file into records, each with its line (JSONL, CSV) or row number (Parquet, a\n`datasets` directory); what cannot be read becomes that line's RowError."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from annotate.imports.errors import ImportRefused, RowError

FILE_TYPES = ("jsonl", "csv", "parquet", "dataset")


MAX_FILE_BYTES = 512 * 2**20  # a file bigger than this is refused before it is read


MAX_LINE_BYTES = 2 * 2**20


def records_read(source: bytes | Path, file_type: str) -> Iterator[tuple[int, Any]]:
    """(line, record) for each row, where a record is a dict or a RowError (the row is bad
    before any field is looked at: invalid UTF-8 or JSON, not an object, too long)."""
    if file_type == "dataset":
        if not isinstance(source, Path):
            raise ImportRefused([], "A dataset is read from a directory on disk.")
        yield from _dataset_records(source)
        return
    data = source.read_bytes() if isinstance(source, Path) else source
    if len(data) > MAX_FILE_BYTES:
        raise ImportRefused([], f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.")
    if file_type == "jsonl":
        yield from _jsonl_records(data)
    elif file_type == "csv":
        yield from _csv_records(data)
    elif file_type == "parquet":
        yield from _parquet_records(data)
    else:
        raise ImportRefused([], f"Unknown file type {file_type!r}; expected one of {FILE_TYPES}.")


def _jsonl_records(data: bytes) -> Iterator[tuple[int, Any]]:
    for line, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield line, RowError(line, f"longer than {MAX_LINE_BYTES // 2**20} MB")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield line, RowError(line, f"invalid UTF-8 at byte {error.start}")
            continue
        try:
            record = json.loads(text)
        except RecursionError:
            yield line, RowError(line, "invalid JSON (nested too deep)")
            continue
        except json.JSONDecodeError as error:
            yield line, RowError(line, f"invalid JSON ({error.msg} at column {error.colno})")
            continue
        except ValueError as error:  # e.g. an integer of more digits than Python converts
            yield line, RowError(line, f"invalid JSON ({error})")
            continue
        yield line, record


def _csv_records(data: bytes) -> Iterator[tuple[int, Any]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        yield line, RowError(line, f"invalid UTF-8 at byte {error.start}")
        return
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        yield line, RowError(line, "contains a NUL character")
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
        if not header:
            return
        if len(set(header)) != len(header):
            yield 1, RowError(1, "the header repeats a column name")
            return
        for record in reader:
            line = reader.line_num
            if None in record or any(value is None for value in record.values()):
                yield line, RowError(line, f"expected {len(header)} columns")
                continue
            yield line, {key: value for key, value in record.items() if value != ""}
    except csv.Error as error:
        yield reader.line_num, RowError(reader.line_num, f"invalid CSV ({error})")


def _parquet_records(data: bytes) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        batches = parquet.iter_batches(batch_size=2000)
        line = 0
        for batch in batches:
            for record in batch.to_pylist():
                line += 1
                yield line, record
    except (pa.ArrowException, OSError) as error:
        raise ImportRefused([], f"Cannot read the file as Parquet: {error}") from None


def _dataset_records(directory: Path) -> Iterator[tuple[int, Any]]:
    import datasets

    if not directory.is_dir():
        raise ImportRefused([], f"{directory} is not a directory.")
    # A cache of its own: datasets' shared cache is keyed on the path, so a directory whose
    # files changed since an earlier read would give the old rows.
    with tempfile.TemporaryDirectory(prefix="prefloop-import-") as cache:
        try:
            if (directory / "dataset_info.json").exists() or (directory / "state.json").exists():
                loaded: Any = datasets.load_from_disk(str(directory))
            else:
                loaded = datasets.load_dataset(str(directory), cache_dir=cache)
        except Exception as error:  # datasets raises many kinds; all mean "cannot read this"
            raise ImportRefused([], f"Cannot read {directory} as a dataset: {error}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                splits = list(loaded)
                raise ImportRefused([], f"The dataset has no train split (splits: {splits}).")
            loaded = loaded["train"]
        for index, record in enumerate(loaded, start=1):
            yield index, dict(record)


def file_type_guess(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith(".parquet"):
        return "parquet"
    return "dataset"
