"""Reading a file into records, each with its line (JSONL, CSV) or row number (Parquet, a
`datasets` directory); what cannot be read becomes that line's RowError.

A file is read as a stream whatever its size or where it comes from (bytes, a path, an
upload): a line at a time (JSONL, CSV), a batch of rows at a time (Parquet), each bounded
before it becomes Python objects, so that what a read holds follows its longest row, not the
file. Every read takes a fresh pass over the file: an import reads it twice (first the
checks, then the writes)."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from annotate.imports.errors import ImportRefused, RowError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa
    import pyarrow.parquet as pq

FILE_TYPES = ("jsonl", "csv", "parquet", "dataset")

# What an import reads from: the file's bytes, its path, or an open binary file (an upload),
# which is read from its start.
Source = bytes | Path | IO[bytes]


MAX_FILE_BYTES = 512 * 2**20  # a file bigger than this is refused before it is read


MAX_LINE_BYTES = 2 * 2**20  # a JSONL or CSV line, or a Parquet row once decoded
TOO_LONG = f"longer than {MAX_LINE_BYTES // 2**20} MB"


# Parquet rows become Python objects a slice at a time, each slice at most this many decoded
# bytes: a file's dictionary encoding repeats one stored value on every row that uses it, so
# a batch's decoded size is not its stored size.
MAX_SLICE_BYTES = 16 * 2**20
PARQUET_BATCH_ROWS = 2000


# A Parquet column chunk said to decompress to more than this, and to more than
# PARQUET_MAX_INFLATION times its stored size, is a compression bomb, not data.
PARQUET_INFLATION_FREE_BYTES = 64 * 2**20
PARQUET_MAX_INFLATION = 100


def records_read(source: Source, file_type: str) -> Iterator[tuple[int, Any]]:
    """(line, record) for each row, where a record is a dict or a RowError (the row is bad
    before any field is looked at: invalid UTF-8 or JSON, not an object, too long)."""
    if file_type == "dataset":
        if not isinstance(source, Path):
            raise ImportRefused([], "A dataset is read from a directory on disk.")
        yield from _dataset_records(source)
        return
    if file_type not in FILE_TYPES:
        raise ImportRefused([], f"Unknown file type {file_type!r}; expected one of {FILE_TYPES}.")
    with _opened(source) as file:
        if file.seek(0, io.SEEK_END) > MAX_FILE_BYTES:
            raise ImportRefused([], f"The file is larger than {MAX_FILE_BYTES // 2**20} MB.")
        file.seek(0)
        if file_type == "jsonl":
            yield from _jsonl_records(file)
        elif file_type == "csv":
            yield from _csv_records(file)
        else:
            yield from _parquet_records(file)


@contextmanager
def _opened(source: Source) -> Iterator[IO[bytes]]:
    if isinstance(source, Path):
        with source.open("rb") as file:
            yield file
    elif isinstance(source, bytes):
        yield io.BytesIO(source)
    else:
        yield source  # the caller's, who closes it


def _lines(file: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """Each line (numbered from 1) with its line ending; None for a line longer than
    MAX_LINE_BYTES, which is skipped a piece at a time, never held whole."""
    limit = MAX_LINE_BYTES + 8  # room for the line ending
    for number in itertools.count(1):
        raw = file.readline(limit)
        if not raw:
            return
        if len(raw) == limit and not raw.endswith(b"\n"):
            while (rest := file.readline(2**20)) and not rest.endswith(b"\n"):
                pass
            yield number, None
            continue
        yield number, raw


def _jsonl_records(file: IO[bytes]) -> Iterator[tuple[int, Any]]:
    for line, raw in _lines(file):
        if raw is None:
            yield line, RowError(line, TOO_LONG)
            continue
        raw = raw.rstrip(b"\n").rstrip(b"\r")
        bom = len(codecs.BOM_UTF8) if line == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        raw = raw[bom:]  # a byte-order mark, as some editors start UTF-8 files with
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_BYTES:
            yield line, RowError(line, TOO_LONG)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            yield line, RowError(line, f"invalid UTF-8 at byte {bom + error.start}")
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


class _Unreadable(Exception):
    """A CSV file stops being readable at this line (its rows cannot be told apart after)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.error = RowError(line, message)


# A lone carriage return ends a line too (universal newlines, as csv expects from a file
# opened with newline=""); a binary file's lines end at line feeds only.
_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _csv_text(file: IO[bytes]) -> Iterator[str]:
    """The file's lines as text, with their endings, for csv; _Unreadable where it stops."""
    offset = 0  # of the line in the file, in bytes
    for line, raw in _lines(file):
        if raw is None:
            raise _Unreadable(line, TOO_LONG)
        bom = len(codecs.BOM_UTF8) if line == 1 and raw.startswith(codecs.BOM_UTF8) else 0
        try:
            text = raw[bom:].decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Unreadable(line, f"invalid UTF-8 at byte {offset + bom + error.start}") from None
        if "\x00" in text:
            raise _Unreadable(line, "contains a NUL character")
        offset += len(raw)
        if "\r" in text:
            yield from (piece for piece in _LONE_CR.split(text) if piece)
        else:
            yield text


def _csv_records(file: IO[bytes]) -> Iterator[tuple[int, Any]]:
    reader = csv.DictReader(_csv_text(file), strict=True)
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
    except _Unreadable as unreadable:
        yield unreadable.error.line, unreadable.error


def _parquet_records(file: IO[bytes]) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(file).metadata
        _parquet_inflation_check(metadata)
        file.seek(0)
        # Text columns stored with a dictionary stay dictionaries: decoded, one stored value
        # repeated on many rows would take the memory of all its copies at once.
        parquet = pq.ParquetFile(
            file,
            read_dictionary=_parquet_dictionary_columns(metadata),
            pre_buffer=False,
            buffer_size=2**20,
        )
        line = 0
        for batch in parquet.iter_batches(batch_size=_parquet_batch_rows(metadata)):
            for record in _parquet_batch_records(batch):
                line += 1
                yield line, RowError(line, record) if isinstance(record, str) else record
    except (pa.ArrowException, OSError) as error:
        raise ImportRefused([], f"Cannot read the file as Parquet: {error}") from None


def _parquet_inflation_check(metadata: pq.FileMetaData) -> None:
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            inflated = column.total_uncompressed_size
            if inflated > PARQUET_INFLATION_FREE_BYTES and inflated > PARQUET_MAX_INFLATION * max(
                column.total_compressed_size, 1
            ):
                raise ImportRefused(
                    [],
                    f"Column {column.path_in_schema} of row group {group + 1} decompresses to "
                    f"{inflated // 2**20} MB from {column.total_compressed_size // 2**10} KB; "
                    "the file is not read.",
                )


def _parquet_dictionary_columns(metadata: pq.FileMetaData) -> list[str]:
    """The text columns (by their path, nested ones too) stored with a dictionary."""
    paths: set[str] = set()
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            column = row_group.column(index)
            if column.physical_type == "BYTE_ARRAY" and column.has_dictionary_page:
                paths.add(column.path_in_schema)
    return sorted(paths)


def _parquet_batch_rows(metadata: pq.FileMetaData) -> int:
    """Rows a batch reads at once: fewer where the file says its rows are wide."""
    widest = max(
        (
            metadata.row_group(group).total_byte_size // max(metadata.row_group(group).num_rows, 1)
            for group in range(metadata.num_row_groups)
        ),
        default=0,
    )
    return max(1, min(PARQUET_BATCH_ROWS, MAX_SLICE_BYTES // max(widest, 1)))


def _parquet_batch_records(batch: pa.RecordBatch) -> Iterator[dict[str, Any] | str]:
    """Each row of the batch as a dict, or as the message of what is wrong with it. Rows are
    weighed in Arrow first: one over MAX_LINE_BYTES is never turned into Python objects, and
    the others are turned a slice of at most MAX_SLICE_BYTES at a time."""
    import numpy as np

    if not batch.num_rows:
        return
    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        sizes += _decoded_bytes(column)
    if int(sizes.max()) <= MAX_LINE_BYTES and int(sizes.sum()) <= MAX_SLICE_BYTES:
        yield from _parquet_rows(batch)
        return
    start, held = 0, 0
    for row, size in enumerate(sizes.tolist()):
        if size > MAX_LINE_BYTES:
            yield from _parquet_rows(batch.slice(start, row - start))
            yield TOO_LONG
            start, held = row + 1, 0
            continue
        if held + size > MAX_SLICE_BYTES and row > start:
            yield from _parquet_rows(batch.slice(start, row - start))
            start, held = row, 0
        held += size
    yield from _parquet_rows(batch.slice(start))


def _parquet_rows(batch: pa.RecordBatch) -> Iterator[dict[str, Any] | str]:
    try:
        yield from batch.to_pylist()
    except UnicodeDecodeError:  # a text column holding bytes that are not UTF-8
        for row in range(batch.num_rows):
            try:
                yield batch.slice(row, 1).to_pylist()[0]
            except UnicodeDecodeError as error:
                yield f"invalid UTF-8 at byte {error.start} of a text field"


def _decoded_bytes(array: pa.Array) -> npt.NDArray[np.int64]:
    """What each value of the array weighs once decoded: the bytes of its texts and 8 for
    every value (each nested value counted once per row that holds it, a dictionary's value
    once per row that uses it), computed in Arrow, without decoding anything."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    if pa.types.is_dictionary(kind):
        weights = pa.array(_decoded_bytes(array.dictionary))
        used = pc.fill_null(pc.take(weights, array.indices), 0)
        return np.asarray(used.to_numpy(zero_copy_only=False), dtype=np.int64)
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    ):
        lengths = pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False)
        return np.asarray(lengths, dtype=np.int64) + 8
    if pa.types.is_map(kind):
        # As the list of (key, value) entries it becomes (the offsets count from the slice).
        array = pa.ListArray.from_arrays(array.offsets, array.values)
        kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        values = _decoded_bytes(array.flatten())
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        summed = np.bincount(parents, weights=values, minlength=len(array))
        return summed.astype(np.int64) + 8
    if pa.types.is_struct(kind):
        sizes = np.full(len(array), 8, dtype=np.int64)
        for field in array.flatten():
            sizes += _decoded_bytes(field)
        return sizes
    if pa.types.is_fixed_size_binary(kind):
        return np.full(len(array), kind.byte_width + 8, dtype=np.int64)
    return np.full(len(array), max(8, array.nbytes // max(len(array), 1)), dtype=np.int64)


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
