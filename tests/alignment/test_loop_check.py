"""The headless loop check's mechanics on a tiny model (the real run is `make loop-check`)."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Comparison, Judgment, Lease, Project

pytestmark = pytest.mark.django_db


def _run(tiny_model_dir: str, tmp_path: Path, rule: str, *extra: str) -> tuple[str, dict]:
    out = StringIO()
    report = tmp_path / "report.json"
    call_command(
        "loop_check",
        "--rule",
        rule,
        "--model",
        str(tiny_model_dir),
        "--train-prompts",
        "6",
        "--eval-prompts",
        "3",
        "--eval-samples-per-prompt",
        "2",
        "--max-new-tokens",
        "12",
        "--train-epochs",
        "1",
        "--train-batch-size",
        "2",
        "--train-max-length",
        "96",
        "--json",
        str(report),
        *extra,
        stdout=out,
    )
    return out.getvalue(), json.loads(report.read_text())


@pytest.mark.parametrize("rule", ["shorter", "examples.loop_rules:prefer_fewer_words"])
def test_it_runs_a_round_trains_and_reports_the_head_to_head(
    tiny_settings, tiny_model_dir: str, tmp_path: Path, rule: str
) -> None:
    # The tiny model never stops before 12 tokens: judge the truncated pairs anyway.
    output, report = _run(tiny_model_dir, tmp_path, rule, "--judge-both-truncated")
    h2h = report["head_to_head"]
    assert h2h["n"] == 3 * 2 == h2h["wins"] + h2h["losses"] + h2h["ties"]
    assert 0 <= h2h["low"] <= h2h["rate"] <= h2h["high"] <= 1
    assert report["new_policy"]["responses"] == report["parent_policy"]["responses"] == 6
    assert report["train_pairs"] + report["train_ties"] == report["train_judgments"] > 0
    project = Project.objects.get(slug=report["project_slug"])
    # Every comparison of both rounds was judged once, through the real judgment service.
    assert (
        Judgment.objects.filter(comparison__project=project).count()
        == Comparison.objects.filter(project=project).count()
    )
    assert "win rate of v1 over v0 (base)" in output and "95% CI" in output
    assert report["seconds"]["total"] > 0


def test_it_names_an_unknown_rule(tiny_settings) -> None:
    with pytest.raises(CommandError, match="no_such_rule"):
        call_command("loop_check", "--rule", "no_such_rule")


def test_it_skips_pairs_cut_off_on_both_sides_and_says_when_nothing_is_left(
    tiny_settings, tiny_model_dir: str, tmp_path: Path
) -> None:
    with pytest.raises(CommandError, match="No preference pairs"):
        _run(tiny_model_dir, tmp_path, "shorter")
    project = Project.objects.get(slug__startswith="loop-check-")
    assert not Judgment.objects.filter(comparison__project=project).exists()
    skipped = {lease.skip_reason for lease in Lease.objects.filter(comparison__project=project)}
    assert skipped == {"both responses cut off at the token limit"}
