"""Exports: TRL's conversational layouts, streamed, with filters and a dataset card."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from annotate.exports import ExportError, ExportFilters, export_rows, export_write
from annotate.models import Comparison, Project, Role
from annotate.services.judgments import judgment_submit
from annotate.services.projects import guideline_publish, membership_set, project_settings_update
from annotate.services.prompts import PromptInput, prompts_create
from tests.factories import client_make, comparison_make

pytestmark = pytest.mark.django_db


def _judged(project: Project, annotator: User) -> dict[str, Comparison]:
    """One pair of each kind on training prompts, one preference on a held-out prompt."""
    train = list(project.prompts.filter(split="train").order_by("id"))
    held_out = project.prompts.filter(split="eval").first()
    assert held_out is not None
    made = {
        "a_wins": comparison_make(train[0], ("Paris.", "Lyon, I think."), seed=1),
        "b_wins": comparison_make(train[1], ("Four.", "2 + 2 = 4."), round_number=2, seed=2),
        "tie": comparison_make(train[2], ("Yes.", "Yes, indeed."), seed=3),
        "both_bad": comparison_make(train[3], ("Purple.", "Seven."), seed=4),
        "held_out": comparison_make(held_out, ("Right.", "Wrong."), seed=5),
    }
    choices = {"a_wins": "a", "b_wins": "b", "tie": "tie", "both_bad": "both_bad", "held_out": "a"}
    for key, comparison in made.items():
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=choices[key])
    return made


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_it_exports_dpo_pairs_of_training_prompts_only(
    project: Project, annotator: User, tmp_path: Path
) -> None:
    made = _judged(project, annotator)
    result = export_write(project=project, directory=tmp_path / "dpo")
    rows = _lines(result.data_file)
    a_wins, b_wins = made["a_wins"], made["b_wins"]
    assert rows == [
        {
            "prompt": a_wins.prompt.messages,
            "chosen": [{"role": "assistant", "content": a_wins.response_a.text}],
            "rejected": [{"role": "assistant", "content": a_wins.response_b.text}],
        },
        {
            "prompt": b_wins.prompt.messages,
            "chosen": [{"role": "assistant", "content": b_wins.response_b.text}],
            "rejected": [{"role": "assistant", "content": b_wins.response_a.text}],
        },
    ]
    held_out = export_write(
        project=project, directory=tmp_path / "eval", filters=ExportFilters(split="eval")
    )
    assert [row["prompt"] for row in _lines(held_out.data_file)] == [
        made["held_out"].prompt.messages
    ]


def test_it_exports_kto_rows_with_ties_and_both_bad(project: Project, annotator: User) -> None:
    made = _judged(project, annotator)
    rows = list(export_rows(project=project, format="kto", filters=ExportFilters()))
    labels = [(row["completion"][0]["content"], row["label"]) for row in rows]
    assert labels == [
        (made["a_wins"].response_a.text, True),
        (made["a_wins"].response_b.text, False),
        (made["b_wins"].response_b.text, True),
        (made["b_wins"].response_a.text, False),
        (made["tie"].response_a.text, True),
        (made["tie"].response_b.text, True),
        (made["both_bad"].response_a.text, False),
        (made["both_bad"].response_b.text, False),
    ]
    without = list(
        export_rows(project=project, format="kto", filters=ExportFilters(include_ties=False))
    )
    assert len(without) == 4


def test_it_filters_by_round_agreement_and_tag(project: Project, annotator: User) -> None:
    made = _judged(project, annotator)
    tagged = prompts_create(
        project=project, rows=[PromptInput(messages="Tagged question?", tags=["math"])]
    )[0]
    comparison_make(tagged, ("One.", "Two."), seed=9, judged_by=annotator, choice="b")

    def prompts(filters: ExportFilters) -> list[object]:
        return [r["prompt"] for r in export_rows(project=project, format="dpo", filters=filters)]

    assert prompts(ExportFilters(rounds=(2,))) == [made["b_wins"].prompt.messages]
    assert prompts(ExportFilters(tags=("math", "other"))) == [tagged.messages]
    assert prompts(ExportFilters(min_agreement=1.0)) == prompts(ExportFilters())
    with pytest.raises(ExportError, match="between 0 and 1"):
        ExportFilters(min_agreement=1.5)
    with pytest.raises(ExportError, match="Unknown format"):
        list(export_rows(project=project, format="orpo", filters=ExportFilters()))


def test_it_writes_parquet_that_loads_as_the_jsonl_does(
    project: Project, annotator: User, tmp_path: Path
) -> None:
    import datasets

    _judged(project, annotator)
    for file_type in ("jsonl", "parquet"):
        export_write(project=project, directory=tmp_path / file_type, file_type=file_type)
    cache = str(tmp_path / "hf-cache")  # datasets' cache is keyed on paths pytest reuses
    from_jsonl = datasets.load_dataset(str(tmp_path / "jsonl"), split="train", cache_dir=cache)
    from_parquet = datasets.load_dataset(str(tmp_path / "parquet"), split="train", cache_dir=cache)
    assert from_parquet.column_names == ["prompt", "chosen", "rejected"]
    assert from_parquet.to_list() == from_jsonl.to_list()
    assert len(from_parquet) == 2


def test_it_writes_a_dataset_card_and_never_overwrites(
    project: Project, annotator: User, lead: User, tmp_path: Path
) -> None:
    _judged(project, annotator)
    guideline_publish(project=project, body="New rules.", changes="Stricter.", created_by=lead)
    result = export_write(project=project, directory=tmp_path / "out", format="kto")
    card = result.card_file.read_text()
    assert card.startswith("---\n") and "path: data/train.jsonl" in card
    assert "- rows: 8" in card
    assert "- pairs: 4 (1 both_bad, 2 preference, 1 tie)" in card
    assert "round 1: 3, round 2: 1" in card
    assert "made under: v1" in card and "current version: v2" in card
    assert '"include_ties": true' in card
    with pytest.raises(ExportError, match="already holds an export"):
        export_write(project=project, directory=tmp_path / "out", format="kto")


def test_the_command_exports_and_explains_bad_arguments(
    project: Project, annotator: User, tmp_path: Path
) -> None:
    _judged(project, annotator)
    out = StringIO()
    call_command("pairs_export", project.slug, str(tmp_path / "c"), "--format", "dpo", stdout=out)
    assert "2 rows in" in out.getvalue()
    assert len(_lines(tmp_path / "c" / "data" / "train.jsonl")) == 2
    with pytest.raises(CommandError, match="no project 'nope'"):
        call_command("pairs_export", "nope", str(tmp_path / "d"))
    with pytest.raises(CommandError, match="whole numbers"):
        call_command("pairs_export", project.slug, str(tmp_path / "e"), "--rounds", "one")


def test_a_lead_downloads_the_jsonl_streamed_and_the_card(
    project: Project, annotator: User, lead: User
) -> None:
    _judged(project, annotator)
    client = client_make(lead)
    page = client.get(f"/p/{project.slug}/export/")
    assert page.status_code == 200 and b"data-count-preference>3<" in page.content
    answer = client.get(f"/p/{project.slug}/export/", {"format": "dpo", "download": "data"})
    assert answer.status_code == 200 and answer.streaming
    assert "attachment" in answer["Content-Disposition"]
    rows = [json.loads(line) for line in b"".join(answer.streaming_content).splitlines()]
    assert len(rows) == 2 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    card = client.get(
        f"/p/{project.slug}/export/", {"format": "kto", "download": "card", "include_ties": "on"}
    )
    assert card.status_code == 200 and b"- rows: 8" in card.content
    bad = client.get(
        f"/p/{project.slug}/export/", {"format": "dpo", "min_agreement": "2", "download": "data"}
    )
    assert bad.status_code == 422 and b"less than or equal to 1" in bad.content
    annotator_client = client_make(annotator)
    assert annotator_client.get(f"/p/{project.slug}/export/").status_code == 404


def test_the_card_figures_stay_bounded_and_exact_where_they_can() -> None:
    from collections import Counter

    from annotate.exports import SAMPLE_SIZE, CardFigures, Sample, _counted_quantiles

    assert _counted_quantiles(Counter({0.5: 1, 1.0: 3})) == "median 1 (quartiles 0.5 to 1)"
    assert _counted_quantiles(Counter()) == "—"
    sample = Sample(seed=0)
    for value in range(3 * SAMPLE_SIZE):
        sample.add(value)
    assert len(sample.values) == SAMPLE_SIZE and sample.seen == 3 * SAMPLE_SIZE
    # Uniform: the sample's mean is near the stream's (1.5 * SAMPLE_SIZE), not its start's.
    assert abs(sum(sample.values) / SAMPLE_SIZE - 1.5 * SAMPLE_SIZE) < 0.05 * SAMPLE_SIZE
    figures = CardFigures()
    assert [figures.prompt_first_seen(i) for i in (7, 7, 8, 100_000, 8)] == [
        True,
        False,
        True,
        True,
        False,
    ]
    assert figures.distinct_prompts == 3 and len(figures.prompts_seen) < 20_000


def test_it_keeps_only_pairs_whose_winner_also_won_the_criteria(
    project: Project, annotator: User, lead: User
) -> None:
    project_settings_update(project=project, criteria=["helpfulness", "honesty"], overlap=2)
    membership_set(project=project, user=lead, role=Role.LEAD)
    train = list(project.prompts.filter(split="train").order_by("id"))
    agreed, split, overruled = (comparison_make(p, seed=i) for i, p in enumerate(train[:3]))
    # Both annotators prefer A. On `agreed` A also wins both criteria; on `split` honesty is
    # one vote each (no majority); on `overruled` B wins helpfulness.
    votes = {
        agreed: ({"helpfulness": "a", "honesty": "a"}, {"helpfulness": "a", "honesty": "tie"}),
        split: ({"helpfulness": "a", "honesty": "a"}, {"helpfulness": "a", "honesty": "b"}),
        overruled: ({"helpfulness": "b", "honesty": "a"}, {"helpfulness": "b"}),
    }
    for comparison, (first, second) in votes.items():
        judgment_submit(
            comparison_id=comparison.pk, annotator=annotator, choice="a", criteria=first
        )
        judgment_submit(comparison_id=comparison.pk, annotator=lead, choice="a", criteria=second)

    def prompts_of(criteria: tuple[str, ...]) -> list[object]:
        filters = ExportFilters(criteria=criteria)
        return [
            row["prompt"] for row in export_rows(project=project, format="dpo", filters=filters)
        ]

    assert prompts_of(()) == [c.prompt.messages for c in (agreed, split, overruled)]
    assert prompts_of(("honesty",)) == [agreed.prompt.messages, overruled.prompt.messages]
    assert prompts_of(("helpfulness",)) == [agreed.prompt.messages, split.prompt.messages]
    assert prompts_of(("helpfulness", "honesty")) == [agreed.prompt.messages]
    # The same through the export page's filter.
    client = client_make(lead)
    answer = client.get(
        f"/p/{project.slug}/export/", {"download": "data", "criteria": "helpfulness, honesty"}
    )
    lines = b"".join(answer.streaming_content).splitlines()
    assert [json.loads(line)["prompt"] for line in lines] == [agreed.prompt.messages]
