from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from annotate.models import Choice, Comparison, Judgment, PairKind, PreferencePair, Project
from annotate.services.judgments import JudgmentRejected, judgment_submit
from annotate.services.snapshots import SnapshotFilters, snapshot_create
from core.errors import ValidationFailed
from tests.factories import comparison_make, member_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def comparison(project: Project) -> Comparison:
    return comparison_make(project.prompts.filter(split="train").first())


def test_it_records_a_judgment_with_layout_and_guideline(
    comparison: Comparison, annotator: User, project: Project
) -> None:
    judgment = judgment_submit(
        comparison_id=comparison.pk, annotator=annotator, side="left", time_spent_ms=1200
    )
    assert judgment.chose_left is True
    assert judgment.left_was_a == comparison.left_is_a
    assert judgment.guideline is not None and judgment.guideline.version == 1
    comparison.refresh_from_db()
    assert comparison.judgment_count == 1 and comparison.status == "complete"
    pair = PreferencePair.objects.get(comparison=comparison)
    assert pair.kind == PairKind.PREFERENCE
    left, right = (
        (comparison.response_a, comparison.response_b)
        if comparison.left_is_a
        else (comparison.response_b, comparison.response_a)
    )
    assert pair.chosen == left and pair.rejected == right


def test_it_returns_the_first_judgment_for_a_retried_submit(
    comparison: Comparison, annotator: User
) -> None:
    first = judgment_submit(
        comparison_id=comparison.pk, annotator=annotator, choice="a", idempotency_key="k1"
    )
    again = judgment_submit(
        comparison_id=comparison.pk, annotator=annotator, choice="b", idempotency_key="k1"
    )
    assert again.pk == first.pk and again.choice == Choice.A
    assert Judgment.objects.count() == 1


def test_it_refuses_a_second_judgment_and_keeps_the_data(
    comparison: Comparison, annotator: User
) -> None:
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    with pytest.raises(JudgmentRejected, match="already judged"):
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="b")
    assert list(Judgment.objects.values_list("choice", flat=True)) == ["a"]


def test_it_refuses_judgments_beyond_the_overlap(
    comparison: Comparison, annotator: User, project: Project
) -> None:
    late = member_make(project, "late")
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    with pytest.raises(JudgmentRejected, match="all the judgments"):
        judgment_submit(comparison_id=comparison.pk, annotator=late, choice="b")
    comparison.refresh_from_db()
    assert comparison.judgment_count == 1


def test_it_refuses_a_disallowed_tie_and_names_it(
    comparison: Comparison, annotator: User, project: Project
) -> None:
    project.allow_tie = False
    project.save()
    with pytest.raises(JudgmentRejected, match="does not allow ties"):
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="tie")
    assert not Judgment.objects.exists()


def test_it_refuses_outsiders(comparison: Comparison, outsider: User) -> None:
    with pytest.raises(JudgmentRejected, match="not a member"):
        judgment_submit(comparison_id=comparison.pk, annotator=outsider, choice="a")


def test_it_aggregates_by_majority_with_its_agreement(
    comparison: Comparison, project: Project
) -> None:
    project.overlap = 3
    project.save()
    voters = [member_make(project, f"v{i}") for i in range(3)]
    for user, choice in zip(voters, ["b", "b", "a"], strict=True):
        judgment_submit(comparison_id=comparison.pk, annotator=user, choice=choice)
    pair = PreferencePair.objects.get(comparison=comparison)
    assert pair.chosen_id == comparison.response_b_id
    assert pair.agreement == pytest.approx(2 / 3)
    assert pair.n_judgments == 3


def test_it_keeps_both_bad_as_its_own_kind(comparison: Comparison, annotator: User) -> None:
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="both_bad")
    assert PreferencePair.objects.get(comparison=comparison).kind == PairKind.BOTH_BAD


def test_it_snapshots_only_training_preference_pairs_with_a_stable_hash(
    project: Project, annotator: User
) -> None:
    train_prompts = list(project.prompts.filter(split="train")[:2])
    held_out = project.prompts.filter(split="eval").first()
    comparisons = [comparison_make(p, seed=i) for i, p in enumerate(train_prompts)]
    comparisons.append(comparison_make(held_out, purpose="eval"))
    for c, choice in zip(comparisons, ["a", "tie", "a"], strict=True):
        judgment_submit(comparison_id=c.pk, annotator=annotator, choice=choice)
    snapshot = snapshot_create(project=project, filters=SnapshotFilters())
    assert snapshot.n_pairs == 1
    again = snapshot_create(project=project, filters=SnapshotFilters())
    assert again.content_hash == snapshot.content_hash
    with pytest.raises(ValidationFailed, match="No preference pairs"):
        snapshot_create(project=project, filters=SnapshotFilters(rounds=(7,)))


def test_it_refuses_an_impossible_time_spent(comparison: Comparison, annotator: User) -> None:
    with pytest.raises(JudgmentRejected, match="Time spent"):
        judgment_submit(
            comparison_id=comparison.pk, annotator=annotator, choice="a", time_spent_ms=-5
        )
    assert not Judgment.objects.exists()


def test_the_migration_turns_split_votes_stored_as_ties_into_undecided(
    project: Project,
) -> None:
    import importlib

    from django.apps import apps

    migration = importlib.import_module("annotate.migrations.0014_split_votes_undecided")
    project.overlap = 2
    project.save()
    voters = [member_make(project, f"m{i}") for i in range(2)]
    prompts = list(project.prompts.filter(split="train")[:2])
    split, tied = (comparison_make(p, seed=i) for i, p in enumerate(prompts))
    for voter, choice in zip(voters, ["a", "b"], strict=True):
        judgment_submit(comparison_id=split.pk, annotator=voter, choice=choice)
    for voter in voters:
        judgment_submit(comparison_id=tied.pk, annotator=voter, choice="tie")
    # What the aggregation stored before: the split as a tie.
    PreferencePair.objects.create(
        comparison=split,
        project=project,
        kind=PairKind.TIE,
        chosen_id=split.response_a_id,
        rejected_id=split.response_b_id,
        agreement=0.5,
        n_judgments=2,
    )
    migration.split_ties_remove(apps, None)
    assert not PreferencePair.objects.filter(comparison=split).exists()
    assert PreferencePair.objects.get(comparison=tied).kind == PairKind.TIE  # chosen as a tie
