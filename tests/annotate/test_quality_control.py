"""Gold items, swapped re-checks, undo, adjudication, send-back and the quality report."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from annotate.models import (
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    LeaseState,
    PairKind,
    PreferencePair,
    Project,
)
from annotate.quality import QualityFilters, project_quality
from annotate.queue import assignment_next, comparison_next_for_annotator
from annotate.selectors import review_queue
from annotate.services.comparisons import (
    comparison_adjudicate,
    comparison_gold_set,
    comparison_send_back,
)
from annotate.services.judgments import (
    JudgmentRejected,
    judgment_submit,
    judgment_undo,
    judgment_undoable,
)
from annotate.services.projects import guideline_publish, project_settings_update
from core.errors import ValidationFailed
from tests.factories import comparison_make, comparisons_make, member_make

pytestmark = pytest.mark.django_db


def _annotators(project: Project, n: int) -> list[User]:
    return [member_make(project, f"a{i}") for i in range(n)]


# Gold ------------------------------------------------------------------------------------------


def test_it_serves_gold_items_to_every_annotator_beyond_the_overlap(project: Project) -> None:
    gold, normal = comparisons_make(project, 2)
    comparison_gold_set(comparison=gold, gold_choice="a")
    project_settings_update(project=project, gold_rate=1.0)
    users = _annotators(project, 3)
    for user, choice in zip(users, ["a", "a", "b"], strict=True):
        assert comparison_next_for_annotator(project=project, annotator=user) == gold
        judgment_submit(comparison_id=gold.pk, annotator=user, choice=choice)
    gold.refresh_from_db()
    assert gold.judgment_count == 3 and gold.status == ComparisonStatus.OPEN
    assert not PreferencePair.objects.filter(comparison=gold).exists()
    # Once answered, the annotator moves on to ordinary work.
    assert comparison_next_for_annotator(project=project, annotator=users[0]) == normal

    report = project_quality(project=project)
    gold_by_user = {a.username: a.bias.gold_correct for a in report.annotators}
    assert (gold_by_user["a0"].hits, gold_by_user["a0"].n) == (1, 1)
    assert (gold_by_user["a2"].hits, gold_by_user["a2"].n) == (0, 1)
    assert (report.overall.gold_correct.hits, report.overall.gold_correct.n) == (2, 3)
    # Gold answers stay out of the agreement and bias figures of real data.
    assert report.alpha.n == 0 and report.overall.left_chosen.n == 0
    assert [item.comparison for item in review_queue(project=project, reason="gold")] == [gold]


def test_it_refuses_a_gold_answer_that_is_no_choice(project: Project) -> None:
    (comparison,) = comparisons_make(project, 1)
    with pytest.raises(ValidationFailed, match="Unknown gold answer 'left'"):
        comparison_gold_set(comparison=comparison, gold_choice="left")
    comparison.refresh_from_db()
    assert comparison.gold_choice == ""


# Swapped re-checks -----------------------------------------------------------------------------


def test_it_reshows_a_judged_pair_with_sides_swapped_and_measures_consistency(
    project: Project, annotator: User
) -> None:
    first, _second = comparisons_make(project, 2)
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None and assignment.comparison == first
    original_left = assignment.left
    judgment_submit(comparison_id=first.pk, annotator=annotator, side="left")
    project_settings_update(project=project, swap_recheck_rate=1.0, recheck_gap_items=0)

    recheck = assignment_next(project=project, annotator=annotator)
    assert recheck is not None and recheck.comparison == first and recheck.is_recheck
    assert recheck.right == original_left  # the same response, now on the other side
    # Choosing the same response again (now on the right) is consistent.
    judgment = judgment_submit(comparison_id=first.pk, annotator=annotator, side="right")
    assert judgment.kind == JudgmentKind.RECHECK
    vote = Judgment.objects.get(comparison=first, annotator=annotator, kind=JudgmentKind.VOTE)
    assert judgment.choice == vote.choice and judgment.left_was_a != vote.left_was_a
    first.refresh_from_db()
    assert first.judgment_count == 1  # a re-check is no vote
    consistent = project_quality(project=project).overall.consistent
    assert (consistent.hits, consistent.n) == (1, 1)
    # Each pair is re-checked once; then the queue moves on.
    nxt = assignment_next(project=project, annotator=annotator)
    assert nxt is not None and nxt.comparison != first and not nxt.is_recheck


def test_it_brings_a_recheck_back_only_after_the_projects_gap(
    project: Project, annotator: User
) -> None:
    comparisons = comparisons_make(project, 6)
    project_settings_update(project=project, recheck_gap_items=3)
    first = assignment_next(project=project, annotator=annotator)
    assert first is not None
    judgment_submit(comparison_id=first.comparison.pk, annotator=annotator, side="left")
    project_settings_update(project=project, swap_recheck_rate=1.0)
    # Right after it, it would be recognised: other pairs come first, three of them.
    for _ in range(3):
        shown = assignment_next(project=project, annotator=annotator)
        assert shown is not None and not shown.is_recheck
        judgment_submit(comparison_id=shown.comparison.pk, annotator=annotator, side="right")
    recheck = assignment_next(project=project, annotator=annotator)
    assert recheck is not None and recheck.is_recheck
    assert recheck.comparison == first.comparison == comparisons[0]


def test_it_brings_a_recheck_back_after_the_projects_minutes(
    project: Project, annotator: User
) -> None:
    comparisons_make(project, 3)
    project_settings_update(project=project, recheck_gap_items=50, recheck_gap_minutes=10)
    first = assignment_next(project=project, annotator=annotator)
    assert first is not None
    vote = judgment_submit(comparison_id=first.comparison.pk, annotator=annotator, side="left")
    project_settings_update(project=project, swap_recheck_rate=1.0)
    shown = assignment_next(project=project, annotator=annotator)
    assert shown is not None and not shown.is_recheck
    Judgment.objects.filter(pk=vote.pk).update(created_at=timezone.now() - timedelta(minutes=11))
    later = assignment_next(project=project, annotator=annotator, holds_nothing=True)
    assert later is not None and later.is_recheck and later.comparison == first.comparison


def test_it_does_not_let_a_recheck_lease_take_a_slot_of_the_overlap(project: Project) -> None:
    project_settings_update(project=project, overlap=2)
    (only,) = comparisons_make(project, 1)
    first, second = _annotators(project, 2)
    judgment_submit(comparison_id=only.pk, annotator=first, choice="a")
    project_settings_update(project=project, swap_recheck_rate=1.0, recheck_gap_items=0)
    recheck = assignment_next(project=project, annotator=first)
    assert recheck is not None and recheck.is_recheck
    assert comparison_next_for_annotator(project=project, annotator=second) == only


# Undo ----------------------------------------------------------------------------------------


def test_it_undoes_the_last_judgment_and_holds_the_pair_again(
    project: Project, annotator: User
) -> None:
    first, _second = comparisons_make(project, 2)
    shown = assignment_next(project=project, annotator=annotator)
    assert shown is not None and shown.comparison == first
    judgment = judgment_submit(comparison_id=first.pk, annotator=annotator, side="left")
    assert PreferencePair.objects.filter(comparison=first).exists()
    assignment_next(project=project, annotator=annotator)  # the next pair is on screen

    judgment_undo(project=project, annotator=annotator, judgment_id=judgment.pk)
    judgment.refresh_from_db()
    first.refresh_from_db()
    assert judgment.superseded_at is not None
    assert first.judgment_count == 0 and first.status == ComparisonStatus.OPEN
    assert not PreferencePair.objects.filter(comparison=first).exists()
    again = assignment_next(project=project, annotator=annotator)
    assert again is not None and again.comparison == first and again.left == shown.left

    changed = judgment_submit(comparison_id=first.pk, annotator=annotator, side="right")
    assert changed.chose_left is False
    live = Judgment.objects.filter(comparison=first, superseded_at__isnull=True)
    assert list(live) == [changed]
    assert Judgment.objects.filter(comparison=first).count() == 2  # the undone one stays
    assert PreferencePair.objects.get(comparison=first).chosen == shown.right


def test_it_refuses_to_undo_an_older_or_expired_judgment(project: Project, annotator: User) -> None:
    first, second, _third = comparisons_make(project, 3)
    older = judgment_submit(comparison_id=first.pk, annotator=annotator, choice="a")
    last = judgment_submit(comparison_id=second.pk, annotator=annotator, choice="a")
    with pytest.raises(JudgmentRejected, match="Only your last judgment"):
        judgment_undo(project=project, annotator=annotator, judgment_id=older.pk)
    Judgment.objects.filter(pk=last.pk).update(
        created_at=timezone.now() - timedelta(seconds=project.undo_seconds + 1)
    )
    assert judgment_undoable(project=project, annotator=annotator) is None
    with pytest.raises(JudgmentRejected, match="within 5 minutes"):
        judgment_undo(project=project, annotator=annotator, judgment_id=last.pk)
    assert Judgment.objects.filter(superseded_at__isnull=False).count() == 0


# Review ---------------------------------------------------------------------------------------


def test_it_lets_an_adjudication_decide_a_split_vote_and_keeps_the_votes(
    project: Project, lead: User
) -> None:
    project_settings_update(project=project, overlap=2)
    (comparison,) = comparisons_make(project, 1)
    first, second = _annotators(project, 2)
    judgment_submit(comparison_id=comparison.pk, annotator=first, choice="a")
    judgment_submit(comparison_id=comparison.pk, annotator=second, choice="b")
    # Undecided: no pair to export or train on, and first in the review queue.
    assert not PreferencePair.objects.filter(comparison=comparison).exists()
    (item,) = review_queue(project=project, reason="split")
    assert item.comparison == comparison and item.undecided

    comparison_adjudicate(comparison=comparison, reviewer=lead, choice="b", rationale="B is right")
    pair = PreferencePair.objects.get(comparison=comparison)
    assert pair.kind == PairKind.PREFERENCE and pair.chosen == comparison.response_b
    assert pair.agreement == 0.5 and pair.n_judgments == 2
    assert Judgment.objects.filter(comparison=comparison, kind=JudgmentKind.VOTE).count() == 2
    assert review_queue(project=project, reason="split") == []
    assert [i.comparison for i in review_queue(project=project, reason="adjudicated")] == [
        comparison
    ]


def test_it_sends_a_comparison_back_for_fresh_judgments(
    project: Project, lead: User, annotator: User
) -> None:
    (comparison,) = comparisons_make(project, 1)
    assert comparison_next_for_annotator(project=project, annotator=annotator) == comparison
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    comparison_send_back(comparison=comparison, reviewer=lead)
    comparison.refresh_from_db()
    assert comparison.status == ComparisonStatus.OPEN and comparison.judgment_count == 0
    assert comparison.sent_back_count == 1
    assert not PreferencePair.objects.filter(comparison=comparison).exists()
    assert comparison.leases.get(annotator=annotator).state == LeaseState.RELEASED
    # The same annotator may judge it afresh; the old judgment stays, superseded.
    assert comparison_next_for_annotator(project=project, annotator=annotator) == comparison
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="b")
    assert PreferencePair.objects.get(comparison=comparison).chosen == comparison.response_b
    assert Judgment.objects.filter(comparison=comparison).count() == 2
    comparison_gold_set(comparison=comparison, gold_choice="a")
    with pytest.raises(ValidationFailed, match="gold item"):
        comparison_send_back(comparison=comparison, reviewer=lead)


# Rich judgments --------------------------------------------------------------------------------


def test_it_records_strength_criteria_and_reason_tags_in_the_layout_shown(
    project: Project, annotator: User
) -> None:
    project_settings_update(
        project=project,
        use_strength=True,
        criteria=["helpfulness", "honesty"],
        reason_tags=["substance", "length"],
    )
    (comparison,) = comparisons_make(project, 1)
    shown = assignment_next(project=project, annotator=annotator)
    assert shown is not None
    with pytest.raises(JudgmentRejected, match="Say how much better") as missing:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, side="left")
    # The service answers the API too: the values it takes, no keyboard keys.
    assert "strength 1 (slightly), 2 (clearly) or 3" in str(missing.value)
    assert "(7)" not in str(missing.value)
    with pytest.raises(JudgmentRejected, match="Unknown reason tags: vibes"):
        judgment_submit(
            comparison_id=comparison.pk,
            annotator=annotator,
            side="left",
            strength=2,
            reason_tags=["vibes"],
        )
    assert not Judgment.objects.exists()
    judgment = judgment_submit(
        comparison_id=comparison.pk,
        annotator=annotator,
        side="left",
        strength=3,
        criteria={"helpfulness": "left", "honesty": "tie"},
        reason_tags=["substance"],
    )
    left_choice = "a" if shown.left_is_a else "b"
    assert judgment.choice == left_choice and judgment.strength == 3
    assert judgment.criteria == {"helpfulness": left_choice, "honesty": "tie"}
    assert judgment.reason_tags == ["substance"]


# Quality report --------------------------------------------------------------------------------


def test_it_reports_agreement_and_bias_split_by_guideline_version(
    project: Project, lead: User
) -> None:
    project_settings_update(project=project, overlap=2)
    first, second = _annotators(project, 2)
    under_v1 = comparisons_make(project, 4)
    for comparison, (x, y) in zip(
        under_v1, [("a", "a"), ("b", "b"), ("a", "b"), ("tie", "tie")], strict=True
    ):
        judgment_submit(comparison_id=comparison.pk, annotator=first, choice=x, time_spent_ms=1000)
        judgment_submit(comparison_id=comparison.pk, annotator=second, choice=y, time_spent_ms=3000)
    guideline_publish(project=project, body="Version 2", changes="stricter", created_by=lead)
    under_v2 = comparisons_make(project, 2)
    for comparison in under_v2:
        for user in (first, second):
            judgment_submit(comparison_id=comparison.pk, annotator=user, choice="a")

    report = project_quality(project=project)
    assert report.judgments == 12
    assert (report.pairwise_agreement.hits, report.pairwise_agreement.n) == (5, 6)
    assert report.alpha.n == 12 and report.alpha.value is not None
    (kappa,) = report.kappas
    assert (kappa.first, kappa.second, kappa.kappa.n) == ("a0", "a1", 6)
    assert [g.label for g in report.by_guideline] == ["Guidelines v1", "Guidelines v2"]
    assert [g.bias.judgments for g in report.by_guideline] == [8, 4]
    assert report.by_guideline[1].alpha.value is None  # every v2 vote the same: undefined
    assert report.overall.median_seconds == 2.0  # v2 votes carry no time

    only_v1 = project_quality(project=project, filters=QualityFilters(guideline_version=1))
    assert only_v1.judgments == 8
    assert (only_v1.pairwise_agreement.hits, only_v1.pairwise_agreement.n) == (3, 4)
    assert only_v1.overall.median_seconds == 2.0
    with_majority = {a.username: a.bias.with_majority for a in only_v1.annotators}
    assert (with_majority["a0"].hits, with_majority["a0"].n) == (3, 4)


def test_it_splits_ties_left_and_longer_rates_per_annotator(
    project: Project, annotator: User
) -> None:
    comparisons = [
        comparison_make(p, texts=("Short.", "A much longer answer."), seed=i)
        for i, p in enumerate(project.prompts.filter(split="train")[:4])
    ]
    for comparison in comparisons[:3]:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="b")
    judgment_submit(comparison_id=comparisons[3].pk, annotator=annotator, choice="tie")
    (row,) = project_quality(project=project).annotators
    assert (row.bias.chosen_longer.hits, row.bias.chosen_longer.n) == (3, 3)
    lefts = sum(not c.left_is_a for c in comparisons[:3])
    assert (row.bias.left_chosen.hits, row.bias.left_chosen.n) == (lefts, 3)
    assert (row.bias.ties.hits, row.bias.ties.n) == (1, 4)


def test_a_skip_comes_back_only_while_the_pair_has_a_slot_for_it(project: Project) -> None:
    from annotate.models import Lease, LeaseState
    from annotate.queue import comparison_skip, skip_undo

    (only,) = comparisons_make(project, 1)
    first, second = _annotators(project, 2)
    shown = assignment_next(project=project, annotator=first)
    assert shown is not None and shown.comparison == only
    comparison_skip(comparison=only, annotator=first, reason="Outside my expertise")
    back = skip_undo(project=project, annotator=first, comparison_id=only.pk)
    assert back.comparison == only
    assert Lease.objects.get(comparison=only, annotator=first).state == LeaseState.HELD
    # Skipped again, and the one slot (overlap 1) taken by another: it cannot come back.
    comparison_skip(comparison=only, annotator=first, reason="Outside my expertise")
    assert comparison_next_for_annotator(project=project, annotator=second) == only
    with pytest.raises(ValidationFailed, match="cannot come back"):
        skip_undo(project=project, annotator=first, comparison_id=only.pk)
    assert Lease.objects.get(comparison=only, annotator=first).state == LeaseState.SKIPPED
