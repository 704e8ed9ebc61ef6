"""Imports: every row checked first, errors by line, all or nothing (or the valid rows)."""

from __future__ import annotations

import io
import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from annotate.exports import ExportFilters, export_rows, export_write
from annotate.imports.errors import ImportRefused
from annotate.imports.jobs import INLINE_MAX_BYTES, import_job_execute, import_job_start
from annotate.imports.reading import records_read
from annotate.imports.rows import MAX_ID_CHARS, Validated, import_validate
from annotate.imports.writing import import_file
from annotate.models import ImportJob, PreferencePair, Project, Prompt
from core.models import JobStatus
from tests.factories import client_make

pytestmark = pytest.mark.django_db


def _jsonl(*rows: object) -> bytes:
    return b"".join(
        (row if isinstance(row, bytes) else json.dumps(row).encode()) + b"\n" for row in rows
    )


def test_it_imports_prompts_from_jsonl_with_tags_ids_and_splits(project: Project) -> None:
    before = project.prompts.count()
    data = _jsonl(
        {"prompt": "What is the capital of France?", "tags": ["geo"], "id": "q1"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi?"},
            ]
        },
        {"text": "Held out?", "split": "eval", "id": 7, "source": "hand-written"},
    )
    result = import_file(project=project, kind="prompts", source=data, file_type="jsonl")
    assert result.created == 3 and not result.skipped
    new = list(project.prompts.order_by("id"))[before:]
    assert [(p.text, p.tags, p.external_id, p.split) for p in new] == [
        ("What is the capital of France?", ["geo"], "q1", "train"),
        ("Hi?", [], "", "train"),
        ("Held out?", [], "7", "eval"),
    ]
    assert new[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert new[2].source == "hand-written"


def test_it_imports_prompts_from_csv(project: Project) -> None:
    data = (
        b"prompt,tags,id\n"
        b'"Explain, briefly, recursion.","cs, short",r1\n'
        b'"[{""role"": ""user"", ""content"": ""As messages""}]",,r2\n'
    )
    result = import_file(project=project, kind="prompts", source=data, file_type="csv")
    assert result.created == 2
    r1, r2 = Prompt.objects.filter(external_id__in=["r1", "r2"]).order_by("external_id")
    assert (r1.text, r1.tags) == ("Explain, briefly, recursion.", ["cs", "short"])
    assert r2.messages == [{"role": "user", "content": "As messages"}]


def test_it_refuses_the_whole_file_and_names_each_bad_line(project: Project) -> None:
    before = project.prompts.count()
    data = _jsonl(
        {"prompt": "Fine."},
        b'{"prompt": "unterminated',
        {"prompt": 42},
        {"tags": ["no prompt"]},
        {"prompt": "NUL \u0000 here"},
        b'{"prompt": "bad \xff byte"}',
        {"prompt": "x" * 40_000},
        {"prompt": "First.", "id": "dup"},
        {"prompt": "Second.", "id": "dup"},
        {"prompt": "Bad split.", "split": "test"},
        [1, 2],
        {"prompt": "Long id.", "id": "i" * (MAX_ID_CHARS + 1)},
    )
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="prompts", source=data, file_type="jsonl")
    assert [str(e) for e in refused.value.errors] == [
        "line 2: invalid JSON (Unterminated string starting at at column 12)",
        'line 3: "prompt" must be text or a list of messages',
        'line 4: missing field "prompt" (or "messages" or "text")',
        'line 5: "prompt" contains a NUL character',
        "line 6: invalid UTF-8 at byte 16",
        'line 7: "prompt": Message 0 is longer than 32000 characters.',
        'line 9: id "dup" repeats line 8',
        "line 10: \"split\" is 'test'; expected one of ['train', 'eval']",
        "line 11: a row must be a JSON object, not list",
        f'line 12: "id" is longer than {MAX_ID_CHARS} characters',
    ]
    assert project.prompts.count() == before  # nothing written


def test_it_imports_the_valid_rows_when_asked(project: Project) -> None:
    Prompt.objects.filter(project=project).update(external_id="")
    import_file(
        project=project,
        kind="prompts",
        source=_jsonl({"prompt": "Old.", "id": "a"}),
        file_type="jsonl",
    )
    data = _jsonl({"prompt": "New.", "id": "b"}, {"prompt": "Again.", "id": "a"}, b"not json")
    result = import_file(
        project=project, kind="prompts", source=data, file_type="jsonl", valid_only=True
    )
    assert result.created == 1
    assert [str(e) for e in result.skipped] == [
        'line 2: id "a" is already a prompt of this project',
        "line 3: invalid JSON (Expecting value at column 1)",
    ]
    assert set(Prompt.objects.exclude(external_id="").values_list("external_id", flat=True)) == {
        "a",
        "b",
    }


def test_it_imports_pairs_in_every_layout_and_exports_them_back(project: Project) -> None:
    data = _jsonl(
        {  # TRL conversational
            "prompt": [{"role": "user", "content": "Greet me."}],
            "chosen": [{"role": "assistant", "content": "Hi."}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {"prompt": "Count to two.", "chosen": "1, 2.", "rejected": "Two, one."},  # standard
        {  # implicit prompt (whole conversations)
            "chosen": [
                {"role": "user", "content": "Capital of Italy?"},
                {"role": "assistant", "content": "Rome."},
            ],
            "rejected": [
                {"role": "user", "content": "Capital of Italy?"},
                {"role": "assistant", "content": "Milan."},
            ],
        },
    )
    result = import_file(project=project, kind="pairs", source=data, file_type="jsonl")
    assert result.created == 3
    pairs = PreferencePair.objects.filter(project=project).order_by("id")
    assert [(p.chosen.text, p.rejected.text, p.agreement) for p in pairs] == [
        ("Hi.", "Go away.", 1.0),
        ("1, 2.", "Two, one.", 1.0),
        ("Rome.", "Milan.", 1.0),
    ]
    rows = list(export_rows(project=project, format="dpo", filters=ExportFilters()))
    assert rows[2] == {
        "prompt": [{"role": "user", "content": "Capital of Italy?"}],
        "chosen": [{"role": "assistant", "content": "Rome."}],
        "rejected": [{"role": "assistant", "content": "Milan."}],
    }


def test_it_refuses_pairs_that_cannot_be_pairs(project: Project) -> None:
    data = _jsonl(
        {"prompt": "Same?", "chosen": "Yes.", "rejected": "Yes."},
        {"prompt": "Missing."},
        {"prompt": "Wrong turn.", "chosen": [{"role": "user", "content": "x"}], "rejected": "y"},
        {
            "chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "1"}],
            "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "2"}],
        },
    )
    with pytest.raises(ImportRefused) as refused:
        import_file(project=project, kind="pairs", source=data, file_type="jsonl")
    assert [str(e) for e in refused.value.errors] == [
        "line 1: chosen and rejected are the same text",
        'line 2: missing field "chosen"',
        'line 3: "chosen" must end with an assistant message',
        "line 4: chosen and rejected must share every turn but their last (the prompt)",
    ]
    assert not PreferencePair.objects.exists()


def test_it_reads_a_datasets_directory_and_parquet(
    project: Project, annotator: User, tmp_path: Path
) -> None:
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_list(
        [{"prompt": "From a saved dataset?", "tags": ["hf"]}, {"prompt": "Second row?", "tags": []}]
    ).save_to_disk(str(saved))
    result = import_file(project=project, kind="prompts", source=saved, file_type="dataset")
    assert result.created == 2
    assert Prompt.objects.get(
        messages=[{"role": "user", "content": "From a saved dataset?"}]
    ).tags == ["hf"]
    assert Prompt.objects.filter(messages=[{"role": "user", "content": "Second row?"}]).exists()
    # An export is a dataset directory too: pairs exported from one project import into another.
    import_file(
        project=project,
        kind="pairs",
        source=_jsonl({"prompt": "P?", "chosen": "Good.", "rejected": "Bad."}),
        file_type="jsonl",
    )
    export_write(project=project, directory=tmp_path / "export", file_type="parquet")
    other = Project.objects.create(name="Other", slug="other")
    result = import_file(
        project=other, kind="pairs", source=tmp_path / "export", file_type="dataset"
    )
    assert result.created == 1
    parquet = (tmp_path / "export" / "data" / "train.parquet").read_bytes()
    third = Project.objects.create(name="Third", slug="third")
    assert (
        import_file(project=third, kind="pairs", source=parquet, file_type="parquet").created == 1
    )
    with pytest.raises(ImportRefused, match="Cannot read the file as Parquet"):
        import_file(project=third, kind="pairs", source=b"not parquet", file_type="parquet")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=2000),
    file_type=st.sampled_from(["jsonl", "csv"]),
    kind=st.sampled_from(["prompts", "pairs"]),
)
def test_arbitrary_bytes_give_rows_or_the_import_error(
    project: Project, data: bytes, file_type: str, kind: str
) -> None:
    try:
        validated = import_validate(
            project=project, kind=kind, records=records_read(data, file_type)
        )
    except ImportRefused:
        return
    assert isinstance(validated, Validated)
    assert all(isinstance(error.line, int) and error.message for error in validated.errors)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    row=st.dictionaries(
        st.sampled_from(
            ["prompt", "messages", "text", "tags", "id", "split", "chosen", "rejected"]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["role", "content", "x"]), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=6,
    ),
    kind=st.sampled_from(["prompts", "pairs"]),
)
def test_arbitrary_json_rows_give_rows_or_line_errors(
    project: Project, row: dict[str, object], kind: str
) -> None:
    data = json.dumps(row).encode() + b"\n"
    validated = import_validate(project=project, kind=kind, records=records_read(data, "jsonl"))
    assert len(validated.rows) + len(validated.errors) == 1


def test_a_lead_imports_through_the_page_and_sees_each_bad_line(
    project: Project, lead: User
) -> None:
    client = client_make(lead)
    before = project.prompts.count()
    bad = SimpleUploadedFile("prompts.jsonl", _jsonl({"prompt": "Good."}, b"{oops"))
    answer = client.post(f"/p/{project.slug}/import/", {"kind": "prompts", "file": bad})
    assert answer.status_code == 422
    assert b"1 bad row: nothing was imported." in answer.content
    assert b"line 2: invalid JSON" in answer.content
    assert project.prompts.count() == before
    good = SimpleUploadedFile("prompts.csv", b"prompt\nFrom the page?\n")
    answer = client.post(f"/p/{project.slug}/import/", {"kind": "prompts", "file": good})
    assert answer.status_code == 302
    assert project.prompts.count() == before + 1
    wrong = SimpleUploadedFile("prompts.txt", b"hello")
    answer = client.post(f"/p/{project.slug}/import/", {"kind": "prompts", "file": wrong})
    assert answer.status_code == 422 and b"Upload a .jsonl" in answer.content


def test_the_command_imports_and_lists_bad_lines(project: Project, tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl({"prompt": "From the command line?"}))
    out = StringIO()
    call_command("data_import", project.slug, str(good), stdout=out)
    assert "Imported 1 prompts" in out.getvalue()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_jsonl({"prompt": 1}))
    err = StringIO()
    with pytest.raises(CommandError, match="1 bad rows, nothing imported"):
        call_command("data_import", project.slug, str(bad), stderr=err)
    assert 'line 1: "prompt" must be text' in err.getvalue()


def test_a_reimport_skips_the_prompts_already_there_and_says_which(
    project: Project, tmp_path: Path
) -> None:
    first = _jsonl({"prompt": "Name three rivers."}, {"prompt": "What is a haiku?"})
    assert (
        import_file(project=project, kind="prompts", source=first, file_type="jsonl").created == 2
    )
    before = project.prompts.count()
    again = _jsonl(
        {"prompt": "name  three RIVERS."},  # the same prompt: case and spacing do not count
        {"prompt": "A new one?"},
        {"prompt": "A new one?"},  # a duplicate within the file
        {"prompt": "What is a haiku?"},
    )
    result = import_file(project=project, kind="prompts", source=again, file_type="jsonl")
    assert (result.created, result.duplicates) == (1, [1, 3, 4])
    assert "skipped 3 duplicates" in result.summary() and "lines 1, 3, 4" in result.summary()
    assert project.prompts.count() == before + 1
    # Every row already there: refused, nothing written; kept when asked.
    with pytest.raises(ImportRefused, match="already in the project"):
        import_file(project=project, kind="prompts", source=first, file_type="jsonl")
    kept = import_file(
        project=project, kind="prompts", source=first, file_type="jsonl", keep_duplicates=True
    )
    assert kept.created == 2 and project.prompts.count() == before + 3
    # The command says so too, and takes the option.
    path = tmp_path / "again.jsonl"
    path.write_bytes(_jsonl({"prompt": "What is a haiku?"}, {"prompt": "Yet another?"}))
    out = StringIO()
    call_command("data_import", project.slug, str(path), stdout=out)
    assert "Imported 1 prompts; skipped 1 duplicate" in out.getvalue()


def test_a_reimport_of_pairs_skips_the_pairs_already_there(project: Project) -> None:
    row = {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco."}
    other = {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Arequipa."}
    data = _jsonl(row)
    assert import_file(project=project, kind="pairs", source=data, file_type="jsonl").created == 1
    result = import_file(
        project=project, kind="pairs", source=_jsonl(row, other), file_type="jsonl"
    )
    assert (result.created, result.duplicates) == (1, [1])
    assert PreferencePair.objects.filter(project=project).count() == 2


def test_a_large_file_goes_to_a_worker_that_reports_its_outcome(
    project: Project,
    lead: User,
    settings: Any,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.DATA_DIR = tmp_path
    # A file over the inline limit, made small: what is measured is where it goes, not how
    # fast 4 MB are read (the real limit is checked in test_the_inline_limit_is_4_mb).
    inline_max = 256 * 2**10
    monkeypatch.setattr("annotate.views.data.INLINE_MAX_BYTES", inline_max)
    client = client_make(lead)
    before = project.prompts.count()
    rows = [
        {"prompt": f"Question {i} about something rather long, padded out?"} for i in range(5_000)
    ]
    data = _jsonl(*rows, {"prompt": 7})
    assert len(data) > inline_max
    upload = SimpleUploadedFile("big.jsonl", data)
    with django_capture_on_commit_callbacks() as dispatched:
        answer = client.post(
            f"/p/{project.slug}/import/", {"kind": "prompts", "file": upload, "valid_only": "on"}
        )
    assert answer.status_code == 302 and len(dispatched) == 1
    job = ImportJob.objects.get(project=project)
    assert job.status == JobStatus.QUEUED and Path(job.path).stat().st_size == len(data)
    assert project.prompts.count() == before  # nothing yet: the worker does it
    page = client.get(f"/p/{project.slug}/import/", HTTP_HX_REQUEST="true")
    assert b'data-status="queued"' in page.content and b'hx-trigger="every 2s"' in page.content

    with django_capture_on_commit_callbacks(execute=False):
        done = import_job_execute(job_id=job.pk)
    assert done is not None and done.status == JobStatus.SUCCEEDED
    assert (done.created_count, done.error_count, done.progress_done) == (5_000, 1, 5_001)
    assert [line for line, _ in done.errors] == [5_001]
    assert project.prompts.count() == before + 5_000
    assert not Path(job.path).exists()
    assert import_job_execute(job_id=job.pk) is None  # a redelivered message does nothing
    page = client.get(f"/p/{project.slug}/import/")
    assert b'data-status="succeeded"' in page.content and b"every 2s" not in page.content


def test_the_inline_limit_is_4_mb(
    project: Project, lead: User, settings: Any, tmp_path: Path
) -> None:
    settings.DATA_DIR = tmp_path
    client = client_make(lead)
    data = b"x" * (INLINE_MAX_BYTES + 1)
    answer = client.post(
        f"/p/{project.slug}/import/",
        {"kind": "prompts", "file": SimpleUploadedFile("big.jsonl", data)},
    )
    assert answer.status_code == 302 and INLINE_MAX_BYTES == 4 * 2**20
    assert ImportJob.objects.get(project=project).file_bytes == len(data)


def test_a_worker_refuses_a_large_file_with_bad_rows_and_writes_nothing(
    project: Project, lead: User, settings: Any, tmp_path: Path
) -> None:
    settings.DATA_DIR = tmp_path
    before = project.prompts.count()
    data = _jsonl({"prompt": "Fine?"}, b"{broken", {"prompt": ""})
    job = import_job_start(
        project=project,
        kind="prompts",
        upload=io.BytesIO(data),
        file_name="bad.jsonl",
        file_type="jsonl",
        created_by=lead,
    )
    done = import_job_execute(job_id=job.pk)
    assert done is not None and done.status == JobStatus.FAILED
    assert [line for line, _ in done.errors] == [2, 3] and done.error_count == 2
    assert project.prompts.count() == before and not Path(job.path).exists()
