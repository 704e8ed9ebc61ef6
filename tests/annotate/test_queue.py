from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from annotate.models import Comparison, LeaseState, Project, Role
from annotate.queue import comparison_next_for_annotator, comparison_skip
from annotate.services.judgments import judgment_submit
from annotate.services.projects import membership_set
from tests.factories import comparison_make

pytestmark = pytest.mark.django_db


def _comparisons(project: Project, n: int, round_number: int = 1) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train"))
    return [
        comparison_make(prompts[i % len(prompts)], round_number=round_number, seed=i)
        for i in range(n)
    ]


def test_it_returns_the_same_held_pair_on_refresh(project: Project, annotator: User) -> None:
    _comparisons(project, 3)
    first = comparison_next_for_annotator(project=project, annotator=annotator)
    again = comparison_next_for_annotator(project=project, annotator=annotator)
    assert first is not None
    assert again == first
    assert first.leases.get(annotator=annotator).state == LeaseState.HELD


def test_it_hides_a_leased_pair_from_others_until_the_lease_expires(
    project: Project, annotator: User, make_user
) -> None:
    (only,) = _comparisons(project, 1)
    other = make_user("other")
    membership_set(project=project, user=other, role=Role.ANNOTATOR)
    assert comparison_next_for_annotator(project=project, annotator=annotator) == only
    assert comparison_next_for_annotator(project=project, annotator=other) is None
    later = timezone.now() + timedelta(seconds=project.lease_seconds + 1)
    assert comparison_next_for_annotator(project=project, annotator=other, now=later) == only


def test_it_offers_current_round_first_then_nearest_completion(
    project: Project, annotator: User, make_user
) -> None:
    project.overlap = 2
    project.save()
    old = _comparisons(project, 1, round_number=1)[0]
    newer = _comparisons(project, 2, round_number=2)
    helper = make_user("helper")
    membership_set(project=project, user=helper, role=Role.ANNOTATOR)
    judgment_submit(comparison_id=newer[1].pk, annotator=helper, choice="a")
    assert comparison_next_for_annotator(project=project, annotator=annotator) == newer[1]
    assert old.round_number == 1


def test_it_never_offers_a_judged_or_skipped_pair_again(project: Project, annotator: User) -> None:
    _comparisons(project, 2)
    got = comparison_next_for_annotator(project=project, annotator=annotator)
    assert got is not None
    judgment_submit(comparison_id=got.pk, annotator=annotator, choice="a")
    nxt = comparison_next_for_annotator(project=project, annotator=annotator)
    assert nxt is not None and nxt != got
    comparison_skip(comparison=nxt, annotator=annotator, reason="not sure")
    assert comparison_next_for_annotator(project=project, annotator=annotator) is None
    assert nxt.leases.get(annotator=annotator).skip_reason == "not sure"


def test_it_keeps_handing_out_a_pair_until_its_overlap_is_reached(
    project: Project, annotator: User, make_user
) -> None:
    project.overlap = 2
    project.save()
    (only,) = _comparisons(project, 1)
    others = [make_user(f"o{i}") for i in range(2)]
    for user in others:
        membership_set(project=project, user=user, role=Role.ANNOTATOR)
    assert comparison_next_for_annotator(project=project, annotator=annotator) == only
    assert comparison_next_for_annotator(project=project, annotator=others[0]) == only
    assert comparison_next_for_annotator(project=project, annotator=others[1]) is None
