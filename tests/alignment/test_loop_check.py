"""The headless loop check's mechanics on a tiny model (the real run is `make loop-check`)."""

from __future__ import annotations

import json
import os
import re
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Comparison, Judgment, Lease, Project

pytestmark = pytest.mark.django_db


def _run(tiny_model_dir: str, tmp_path: Path, rule: str, *extra: str) -> tuple[str, dict]:
    out = StringIO()
    report = tmp_path / "report.json"
    _call(out, report, tiny_model_dir, rule, *extra)
    return out.getvalue(), json.loads(report.read_text())


def _call(out: StringIO, report: Path, tiny_model_dir: str, rule: str, *extra: str) -> None:
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


def test_it_runs_a_panel_of_rules_and_reports_each_head_to_head(
    tiny_settings, tiny_model_dir: str, tmp_path: Path
) -> None:
    rules = ["shorter", "examples.loop_rules:prefer_fewer_words"]
    # The tiny model never stops before 12 tokens: judge the truncated pairs anyway. No win
    # rate reaches 101 %: the gate fails, naming each rule, after the report is written.
    out = StringIO()
    with pytest.raises(CommandError, match=r"below the required 101.0%: shorter .*prefer_fewer"):
        _call(
            out,
            tmp_path / "report.json",
            tiny_model_dir,
            ",".join(rules),
            "--judge-both-truncated",
            "--min-win-rate",
            "1.01",
        )
    output = out.getvalue()
    reports = json.loads((tmp_path / "report.json").read_text())
    assert [r["rule"] for r in reports] == rules
    for report in reports:
        h2h = report["head_to_head"]
        assert h2h["n"] == 3 * 2 == h2h["wins"] + h2h["losses"] + h2h["ties"]
        assert 0 <= h2h["low"] <= h2h["rate"] <= h2h["high"] <= 1
        assert 3 <= h2h["effective_n"] <= 6  # two games a prompt: between 3 and 6 independent
        assert report["new_policy"]["responses"] == report["parent_policy"]["responses"] == 6
        assert report["train_pairs"] + report["train_ties"] == report["train_judgments"] > 0
        assert report["peak_rss_mb"] > 0 and report["seconds"]["total"] > 0
        project = Project.objects.get(slug=report["project_slug"])
        # Every comparison of both rounds was judged once, through the real judgment service.
        assert (
            Judgment.objects.filter(comparison__project=project).count()
            == Comparison.objects.filter(project=project).count()
        )
    assert "win rate of v1 over v0 (base)" in output and "95% CI" in output
    # Each phase's progress as it goes, from the jobs' own log lines.
    assert "[round 1 generation] " in output and "prompts," in output and "s left" in output
    assert "[training] " in output and "step 1/" in output
    assert "[head-to-head generation] " in output
    # Each phase's end: its time, its peak memory and the memory it started from.
    for phase in ("round 1 generation", "training", "head-to-head generation"):
        assert re.search(
            rf"\[{phase}\] done in \d+ s; peak RSS \d+ MB \(\d+ MB at its start\)", output
        )
    # The training run's own phases, with their times.
    assert re.search(
        r"training by phase: loading the model \d+ s, .*saving the adapter \d+ s", output
    )
    # The closing table: a row per rule.
    table = [line for line in output.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in table[1:]] == [f"| {rule}" for rule in rules]


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


def test_a_model_judge_votes_on_the_training_pairs_instead_of_the_annotators(
    tiny_settings, tiny_model_dir: str, tmp_path: Path
) -> None:
    output, report = _run(tiny_model_dir, tmp_path, "shorter", "--judge", "rule:shorter")
    project = Project.objects.get(slug=report["project_slug"])
    judge = project.judges.get()
    round1 = Comparison.objects.filter(project=project, round_number=1).items()
    # Every training pair was judged once, by the judge, through the judgment service; the
    # simulated annotators judged only the head-to-head.
    train_votes = Judgment.objects.filter(comparison__in=round1)
    assert train_votes.count() == round1.count() == report["train_judgments"] > 0
    assert set(train_votes.values_list("annotator", flat=True)) == {judge.user_id}
    assert report["judge"]["answered"] == round1.count()
    # The same rule asked twice with the sides swapped: always consistent, always the rule's.
    assert report["judge"]["agreement_with_rule"] == 1.0 and report["judge"]["asks_agree"] == 1.0
    assert "model judge:" in output and "match the rule on 100.0%" in output
    h2h = Judgment.objects.filter(comparison__project=project, comparison__round_number=2)
    assert h2h.exists() and judge.user_id not in set(h2h.values_list("annotator", flat=True))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--judge", "oracle"], "use 'local', 'rule:NAME'"),
        (["--judge", "llm"], "needs --judge-url and --judge-model"),
    ],
)
def test_it_names_a_judge_it_cannot_use(tiny_settings, args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("loop_check", *args)


def test_it_migrates_a_fresh_database_before_it_starts(tmp_path: Path) -> None:
    """As the README shows it, right after `make install`: no `migrate` run yet."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")},
        "PREFLOOP_DATA_DIR": str(tmp_path),
        "DEBUG": "1",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "loop_check", "--judge", "oracle"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "applying" in result.stdout and "database migrations first" in result.stdout
    # It got as far as its own arguments: the database has its tables.
    assert result.returncode == 1 and "use 'local', 'rule:NAME'" in result.stderr
    assert "no such table" not in result.stderr and (tmp_path / "prefloop.sqlite3").is_file()
