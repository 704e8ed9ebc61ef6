"""Imports under hostile or awkward files: bounded memory whatever the file unpacks to, and a
clear error for each bad row, never an exception."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import tracemalloc
from io import StringIO
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from annotate.imports.errors import ImportRefused
from annotate.imports.jobs import import_job_execute
from annotate.imports.reading import MAX_LINE_BYTES
from annotate.imports.writing import WRITE_CHUNK, import_file
from annotate.models import ImportJob, Project, Prompt
from core.models import JobStatus
from tests.factories import client_make

pytestmark = pytest.mark.django_db

TOO_LONG = f"longer than {MAX_LINE_BYTES // 2**20} MB"


def _parquet(table: pa.Table, **options: Any) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, **options)
    return out.getvalue()


def _dictionary_bomb() -> bytes:
    """645 bytes that decode to 2 GB: one 5 MB text, dictionary-encoded, on each of 400 rows."""
    value = pa.array(["x" * (5 * 2**20)])
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 400, pa.int32()), value)
    return _parquet(pa.table({"prompt": column}), compression="zstd", compression_level=22)


def test_it_refuses_each_row_of_a_parquet_dictionary_bomb_and_writes_nothing(
    project: Project, lead: User, tmp_path: Path
) -> None:
    bomb = _dictionary_bomb()
    assert len(bomb) < 1024
    before = project.prompts.count()
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="prompts", source=bomb, file_type="parquet")
    assert [str(e) for e in refused.value.errors] == [
        f"line {line}: {TOO_LONG}" for line in range(1, 401)
    ]
    # Through the page (a small upload, imported at once) and the command, the same answer.
    upload = SimpleUploadedFile("bomb.parquet", bomb)
    answer = client_make(lead).post(
        f"/p/{project.slug}/import/", {"kind": "prompts", "file": upload, "valid_only": "on"}
    )
    assert answer.status_code == 422 and f"line 1: {TOO_LONG}".encode() in answer.content
    path = tmp_path / "bomb.parquet"
    path.write_bytes(bomb)
    with pytest.raises(CommandError, match=f"400 bad rows, nothing imported: line 1: {TOO_LONG}"):
        call_command("data_import", project.slug, str(path), stderr=StringIO())
    assert project.prompts.count() == before


def test_a_parquet_dictionary_bomb_is_read_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.parquet"
    path.write_bytes(_dictionary_bomb())
    # A fresh process, so that its peak resident memory is this read's alone.
    script = textwrap.dedent(
        """
        import json, resource, sys
        from pathlib import Path
        import pyarrow.parquet
        from annotate.imports.reading import records_read

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        records = [type(record).__name__ for _, record in records_read(Path(sys.argv[1]), "parquet")]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_mb": (after - before) / 1024, "records": records}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(done.stdout)
    assert found["records"] == ["RowError"] * 400
    assert found["growth_mb"] < 200, found["growth_mb"]


def test_a_bomb_nested_in_a_conversation_is_refused_as_well(project: Project) -> None:
    rows = 50
    content = pa.DictionaryArray.from_arrays(
        pa.array([0] * rows, pa.int32()), pa.array(["x" * (5 * 2**20)])
    )
    turns = pa.StructArray.from_arrays(
        [pa.array(["user"] * rows), content], names=["role", "content"]
    )
    prompt = pa.ListArray.from_arrays(pa.array(range(rows + 1), pa.int32()), turns)
    data = _parquet(
        pa.table(
            {
                "prompt": prompt,
                "chosen": [f"Good {i}." for i in range(rows)],
                "rejected": [f"Bad {i}." for i in range(rows)],
            }
        ),
        compression="zstd",
    )
    assert len(data) < 4096
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="pairs", source=data, file_type="parquet")
    assert {e.message for e in refused.value.errors} == {TOO_LONG}
    assert len(refused.value.errors) == rows


def test_it_refuses_a_parquet_file_that_decompresses_a_hundredfold(project: Project) -> None:
    # Not dictionary-encoded: 80 MB of text that compresses to almost nothing.
    data = _parquet(
        pa.table({"prompt": ["x" * 200_000] * 400}), use_dictionary=False, compression="zstd"
    )
    with pytest.raises(ImportRefused, match=r"Column prompt of row group 1 decompresses to 76 MB"):
        import_file(project=project, kind="prompts", source=data, file_type="parquet")


def test_it_turns_wide_parquet_rows_into_objects_a_slice_at_a_time(project: Project) -> None:
    # 30 rows of 1.5 MB each (45 MB decoded, more than one slice holds), then one of 3 MB.
    notes = pa.DictionaryArray.from_arrays(
        pa.array([0] * 30 + [1], pa.int32()), pa.array(["n" * (3 * 2**19), "n" * (3 * 2**20)])
    )
    prompts = pa.array([f"Question number {i}?" for i in range(1, 32)])
    data = _parquet(pa.table({"prompt": prompts, "notes": notes}))
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="prompts", source=data, file_type="parquet")
    assert [str(e) for e in refused.value.errors] == [f"line 31: {TOO_LONG}"]
    result = import_file(
        project=project, kind="prompts", source=data, file_type="parquet", valid_only=True
    )
    assert result.created == 30 and [str(e) for e in result.skipped] == [f"line 31: {TOO_LONG}"]
    texts = {prompt.text for prompt in Prompt.objects.filter(project=project)}
    assert {f"Question number {i}?" for i in range(1, 32)} & texts == {
        f"Question number {i}?" for i in range(1, 31)
    }


def test_it_gives_a_parquet_row_of_invalid_utf8_its_own_error(project: Project) -> None:
    raw = pa.array([b"Fine?", b"bad \xff byte?", b"\xed\xa0\x80 surrogate?", b"Also fine?"])
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # unchecked UTF-8
    data = _parquet(pa.table({"prompt": text}))
    result = import_file(
        project=project, kind="prompts", source=data, file_type="parquet", valid_only=True
    )
    assert result.created == 2
    assert [str(e) for e in result.skipped] == [
        "line 2: invalid UTF-8 at byte 4 of a text field",
        "line 3: invalid UTF-8 at byte 0 of a text field",
    ]


SURROGATE = '"prompt" is not valid Unicode (a lone surrogate, U+D800, at character 4)'


def test_a_lone_surrogate_is_that_rows_error_on_every_path(
    project: Project, lead: User, tmp_path: Path
) -> None:
    before = project.prompts.count()
    data = b'{"prompt": "Fine?"}\n{"prompt": "Bad \\ud800 text?"}\n{"prompt": "Also fine?"}\n'
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="prompts", source=data, file_type="jsonl")
    assert [str(e) for e in refused.value.errors] == [f"line 2: {SURROGATE}"]
    result = import_file(
        project=project, kind="prompts", source=data, file_type="jsonl", valid_only=True
    )
    assert result.created == 2 and [str(e) for e in result.skipped] == [f"line 2: {SURROGATE}"]
    assert project.prompts.count() == before + 2
    # The page and the command say the same, and write nothing.
    upload = SimpleUploadedFile("surrogate.jsonl", b'{"prompt": "One \\udfff more?"}\n')
    answer = client_make(lead).post(
        f"/p/{project.slug}/import/", {"kind": "prompts", "file": upload}
    )
    assert answer.status_code == 422 and b"not valid Unicode (a lone surrogate" in answer.content
    path = tmp_path / "surrogate.jsonl"
    path.write_bytes(b'{"prompt": "Last \\ud800 one?", "tags": ["ok"]}\n')
    with pytest.raises(CommandError, match=r"line 1: .* is not valid Unicode"):
        call_command("data_import", project.slug, str(path), stderr=StringIO())
    # A pair's answers, a tag, an id; a CSV cell holding messages as JSON.
    pairs = (
        b'{"prompt": "P?", "chosen": "Good \\ud83d.", "rejected": "Bad."}\n'
        b'{"prompt": "Q?", "chosen": "Good.", "rejected": "Bad.", "tags": ["\\udc00"]}\n'
        b'{"prompt": "R?", "chosen": "Good.", "rejected": "Bad.", "id": "\\ud800"}\n'
    )
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="pairs", source=pairs, file_type="jsonl")
    assert [str(e) for e in refused.value.errors] == [
        'line 1: "chosen" is not valid Unicode (a lone surrogate, U+D83D, at character 5)',
        'line 2: "tags" is not valid Unicode (a lone surrogate, U+DC00, at character 0)',
        'line 3: "id" is not valid Unicode (a lone surrogate, U+D800, at character 0)',
    ]
    csv_data = b'prompt\n"[{""role"": ""user"", ""content"": ""Hi \\ud800?""}]"\n'
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="prompts", source=csv_data, file_type="csv")
    assert [str(e) for e in refused.value.errors] == [
        'line 2: "prompt" is not valid Unicode (a lone surrogate, U+D800, at character 3)'
    ]
    assert project.prompts.count() == before + 2


def test_it_accepts_a_byte_order_mark_at_the_start_of_a_jsonl_file(project: Project) -> None:
    data = b'\xef\xbb\xbf{"prompt": "After a BOM?"}\n{"prompt": "Second?"}\n'
    result = import_file(project=project, kind="prompts", source=data, file_type="jsonl")
    assert result.created == 2 and not result.skipped
    assert "After a BOM?" in {prompt.text for prompt in Prompt.objects.filter(project=project)}
    # Only at the start: anywhere else it is a bad line.
    with pytest.raises(ImportRefused, match="line 2: invalid JSON"):
        import_file(
            project=project,
            kind="prompts",
            source=b'{"prompt": "One?"}\n\xef\xbb\xbf{"prompt": "Two?"}\n',
            file_type="jsonl",
        )


def test_it_skips_a_line_too_long_without_holding_it(project: Project) -> None:
    data = (
        b'{"prompt": "Before?"}\n'
        + b'{"prompt": "'
        + b"y" * (MAX_LINE_BYTES + 10)
        + b'"}\r\n{"prompt": "After?"}'  # the last line has no line ending
    )
    result = import_file(
        project=project, kind="prompts", source=data, file_type="jsonl", valid_only=True
    )
    assert result.created == 2 and [str(e) for e in result.skipped] == [f"line 2: {TOO_LONG}"]


def test_a_csv_file_stops_being_read_where_it_stops_being_text(project: Project) -> None:
    data = b'\xef\xbb\xbfprompt\r\nFirst?\r\n"Second,\r\nover two lines?"\r\nbad \xff\r\nLast?\r\n'
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="prompts", source=data, file_type="csv")
    assert [str(e) for e in refused.value.errors] == ["line 5: invalid UTF-8 at byte 51"]
    result = import_file(
        project=project, kind="prompts", source=data, file_type="csv", valid_only=True
    )
    assert result.created == 2
    texts = {prompt.text for prompt in Prompt.objects.filter(project=project)}
    assert {"First?", "Second,\r\nover two lines?"} <= texts and "Last?" not in texts


def test_a_worker_holds_a_chunk_of_rows_not_the_file(
    project: Project, settings: Any, tmp_path: Path
) -> None:
    settings.DATA_DIR = tmp_path
    # 8,000 rows of 2 KB: the same prompt, already in the project, but for the last row (so
    # that the import reads, checks and looks up every row but writes one: the memory that
    # the renderer's cache of written prompts takes is not what is measured).
    prompt = "Question: " + "word " * 400 + "?"
    import_file(
        project=project,
        kind="prompts",
        source=json.dumps({"prompt": prompt}).encode(),
        file_type="jsonl",
    )
    path = tmp_path / "rows.jsonl"
    with path.open("w") as out:
        for _ in range(8000):
            out.write(json.dumps({"prompt": prompt}) + "\n")
        out.write(json.dumps({"prompt": "A new one?"}) + "\n")
    size = path.stat().st_size
    job = ImportJob.objects.create(
        project=project,
        kind="prompts",
        file_type="jsonl",
        file_name="rows.jsonl",
        file_bytes=size,
        path=str(path),
    )
    tracemalloc.start()
    try:
        done = import_job_execute(job_id=job.pk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done is not None and done.status == JobStatus.SUCCEEDED, done and done.message
    assert (done.created_count, done.progress_done) == (1, 8001)
    # The file, or every row parsed, would take more than the file's size.
    assert peak < size / 4, (peak, size)


def test_a_write_that_fails_after_some_chunks_leaves_the_project_as_it_was(
    project: Project,
) -> None:
    before = project.prompts.count()
    data = b"".join(
        json.dumps({"prompt": f"Row {i}?"}).encode() + b"\n" for i in range(2 * WRITE_CHUNK + 5)
    )
    written: list[int] = []

    def fail(result: Any) -> None:
        written.append(Prompt.objects.filter(project=project).count() - before)
        raise RuntimeError("the job was lost")

    with pytest.raises(RuntimeError):
        import_file(
            project=project, kind="prompts", source=data, file_type="jsonl", on_written=fail
        )
    assert written == [2 * WRITE_CHUNK + 5]  # every chunk was written, then rolled back
    assert project.prompts.count() == before
