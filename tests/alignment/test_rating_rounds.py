"""Ratings on the machine side (issue 22): a round can ask for ratings of its samples, KTO
trains on the rated labels (one unpaired row each), simulated annotators rate by a rule held
to the other answers of the prompt, and a model judge, which compares, passes ratings by."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from alignment.engine.rules import BUILTIN_RULES, rate_by_rule
from alignment.engine.training import train
from alignment.loop import judge_by_rule
from alignment.models import JudgeKind, JudgeMode, TrainingRun
from alignment.services.judges import judge_add, judge_run_start
from alignment.services.training_settings import TrainingSettings
from alignment.workers.generation import generation_job_execute
from alignment.workers.judging import judge_job_execute
from alignment.workers.training import training_run_execute
from annotate.models import (
    Comparison,
    Judgment,
    Lease,
    LeaseState,
    PairKind,
    PreferencePair,
    Project,
    Response,
)
from core.errors import ValidationFailed
from core.models import JobStatus
from core.text import CUT_OFF
from tests.factories import (
    client_make,
    generation_job_make,
    preference_examples_make,
    ratings_make,
    round_make,
    training_config_make,
    training_run_make,
)

pytestmark = pytest.mark.django_db


def test_a_rating_round_rates_each_distinct_sample_and_kto_trains_on_the_labels(
    tiny_project: Project, annotator: User
) -> None:
    job = generation_job_make(
        tiny_project, prompts=3, samples_per_prompt=3, pair_selection="rating"
    )
    generation_job_execute(job_id=job.pk)
    ratings = list(Comparison.objects.filter(project=tiny_project).order_by("id"))
    samples = Response.objects.filter(prompt__project=tiny_project)
    distinct = {(r.prompt_id, r.text.strip()) for r in samples}
    assert len(ratings) == len(distinct) > 0  # a repeated text is rated once
    assert all(r.is_rating and r.selection == {"strategy": "rating", "k": 3} for r in ratings)
    # Simulated annotators rate by the rule, holding each answer to the others of its prompt.
    rule = BUILTIN_RULES["shorter"]
    work = judge_by_rule(project=tiny_project, annotators=[annotator], rule=rule)
    assert work.judgments == len(ratings)
    for rating in ratings:
        others = [
            r.response_a.text
            for r in ratings
            if r.prompt_id == rating.prompt_id and r.pk != rating.pk
        ]
        good = rate_by_rule(rule, rating.prompt.text, rating.response_a.text, others)
        assert PreferencePair.objects.get(comparison=rating).kind == ("good" if good else "bad")
    # A DPO run has nothing to learn from ratings, and says so.
    with pytest.raises(ValidationFailed, match="ratings train with KTO only"):
        training_run_make(tiny_project, epochs=1, batch_size=2)
    run = training_run_make(
        tiny_project,
        training=TrainingSettings.from_preset(
            "kto", epochs=1, batch_size=2, gradient_accumulation_steps=1, max_length=96
        ),
    )
    assert run.snapshot.n_pairs == len(ratings)
    assert {"good", "bad"} <= set(run.snapshot.filters["kinds"])
    training_run_execute(run_id=run.pk)
    run = TrainingRun.objects.get(pk=run.pk)
    assert run.status == JobStatus.SUCCEEDED, run.error
    # One unpaired row per rating: steps of two rows each.
    assert run.summary["steps"] == -(-len(ratings) // 2)


def test_a_rating_round_takes_one_sample_per_prompt_but_pairs_need_two(
    tiny_project: Project,
) -> None:
    round_ = round_make(tiny_project, prompts=2, samples_per_prompt=1, pair_selection="rating")
    assert round_.samples_per_prompt == 1
    with pytest.raises(ValidationFailed, match="at least 2 samples per prompt"):
        round_make(tiny_project, prompts=2, samples_per_prompt=1)


def test_rate_by_rule_holds_an_answer_to_the_others() -> None:
    shorter = BUILTIN_RULES["shorter"]
    others = ["A middling answer.", "The longest answer of them all, by far."]
    assert rate_by_rule(shorter, "Q?", "Short.", others)
    assert not rate_by_rule(shorter, "Q?", "An answer longer than every other one here.", others)
    assert not rate_by_rule(shorter, "Q?", "Short.", [])  # nothing to hold it to


def test_kto_takes_one_unpaired_row_per_rating(tiny_model_dir: str, tmp_path: Path) -> None:
    first, second, third = preference_examples_make(3)
    examples = [
        first,  # a pair: two rows
        dataclasses.replace(second, rejected=second.chosen, kind="good"),
        dataclasses.replace(third, rejected=third.chosen, kind="bad"),
    ]
    result = train(
        training_config_make(tiny_model_dir, tmp_path, method="kto", epochs=1, batch_size=2),
        examples,
    )
    assert result.steps == 2  # four rows, two a step
    with pytest.raises(ValueError, match="only kto trains on"):
        train(training_config_make(tiny_model_dir, tmp_path / "d"), examples[1:])


def test_a_voting_model_judge_passes_ratings_by_with_its_reason(project: Project) -> None:
    (rating,) = ratings_make(project.prompts.filter(split="train")[0], ["One answer."])
    judge = judge_add(
        project=project, name="Rule", kind=JudgeKind.RULE, rule="shorter", mode=JudgeMode.VOTE
    )
    job = judge_run_start(judge=judge, dispatch=False)
    judge_job_execute(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert not Judgment.objects.filter(comparison=rating).exists()
    skip = Lease.objects.get(comparison=rating, annotator=judge.user)
    assert skip.state == LeaseState.SKIPPED and "rates none" in skip.skip_reason


def test_loop_check_asks_for_kto_with_ratings() -> None:
    with pytest.raises(CommandError, match="Ratings train with KTO only"):
        call_command("loop_check", "--pair-selection", "rating")


def test_the_review_page_decides_a_rating_good_or_bad(project: Project, lead: User) -> None:
    (rating,) = ratings_make(project.prompts.filter(split="train")[0], ["One answer."])
    client = client_make(lead)
    page = client.get(f"/p/{project.slug}/review/{rating.pk}/").content.decode()
    assert f'data-rated="{rating.response_a_id}"' in page
    assert '<option value="good">' in page and '<option value="a">' not in page
    refused = client.post(f"/p/{project.slug}/review/{rating.pk}/adjudicate/", {"choice": "a"})
    assert refused.status_code == 422
    assert not PreferencePair.objects.filter(comparison=rating).exists()
    client.post(f"/p/{project.slug}/review/{rating.pk}/adjudicate/", {"choice": "bad"})
    assert PreferencePair.objects.get(comparison=rating).kind == PairKind.BAD
    page = client.get(f"/p/{project.slug}/review/{rating.pk}/").content.decode()
    assert 'data-label="bad"' in page


def test_simulated_annotators_rate_an_unfinished_response_rather_than_skip_it(
    project: Project, annotator: User
) -> None:
    ratings = ratings_make(project.prompts.filter(split="train")[0], ["Short.", "Long " * 20])
    Response.objects.filter(pk=ratings[1].response_a_id).update(finish_reason=CUT_OFF)
    work = judge_by_rule(
        project=project,
        annotators=[annotator],
        rule=BUILTIN_RULES["shorter"],
        skip_both_truncated=True,
    )
    assert work.judgments == 2
    labels = dict(PreferencePair.objects.values_list("comparison_id", "kind"))
    assert labels == {ratings[0].pk: PairKind.GOOD, ratings[1].pk: PairKind.BAD}
