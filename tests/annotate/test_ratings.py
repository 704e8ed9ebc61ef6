"""Ratings of single responses as a judging mode (issue 22): the queue hands a rating out like
a pair, under the same leases, overlap, skips, undo, gold and re-checks; a vote is good or bad
(or a score on the 1-5 scale, good from the project's threshold up); the votes aggregate to a
desirable or undesirable label, undecided on an even split; quality measures them; KTO's
export and snapshots take them."""

from __future__ import annotations

import json
import random

import pytest
from django.contrib.auth.models import User
from django.test import Client

from annotate.exports import ExportFilters, export_rows
from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    LeaseState,
    PairKind,
    PreferencePair,
    Project,
    RatingScale,
)
from annotate.quality import project_quality
from annotate.queue import assignment_next, comparison_skip
from annotate.selectors import review_queue
from annotate.services.comparisons import (
    comparison_adjudicate,
    comparison_gold_set,
    comparison_send_back,
)
from annotate.services.judgments import JudgmentRejected, judgment_submit, judgment_undo
from annotate.services.projects import project_settings_update
from annotate.services.snapshots import SnapshotFilters, snapshot_create
from core.errors import ValidationFailed
from tests.factories import comparisons_make, member_make, ratings_make

pytestmark = pytest.mark.django_db


@pytest.fixture
def ratings(project: Project) -> list[Comparison]:
    return ratings_make(project.prompts.filter(split="train").first())


def _five_point(project: Project, threshold: int = 4) -> None:
    project_settings_update(
        project=project, rating_scale=RatingScale.FIVE, rating_threshold=threshold
    )


def test_a_rating_holds_one_response_and_no_second(ratings: list[Comparison]) -> None:
    rating = ratings[0]
    assert rating.is_rating and not rating.is_ranking
    assert rating.response_b_id is None
    assert rating.response_a.text == "A fine answer."


def test_the_queue_hands_out_ratings_and_a_vote_stores_the_label(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    seen = {}
    for label in ("good", "bad"):
        assignment = assignment_next(project=project, annotator=annotator)
        assert assignment is not None and assignment.rated is not None
        assert assignment.left == assignment.rated and assignment.right is None
        judgment = judgment_submit(
            comparison_id=assignment.comparison.pk, annotator=annotator, side=label
        )
        seen[assignment.rated.text] = judgment
        assert judgment.choice == label and judgment.kind == JudgmentKind.VOTE
        assert judgment.guideline is not None and judgment.guideline.version == 1
        pair = PreferencePair.objects.get(comparison_id=assignment.comparison.pk)
        assert pair.kind == label
        assert pair.chosen_id == pair.rejected_id == assignment.rated.pk
    assert assignment_next(project=project, annotator=annotator) is None
    assert len(seen) == 2


def test_votes_aggregate_by_majority_and_an_even_split_is_undecided(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    project.overlap = 2
    project.save()
    other = member_make(project, "second", login=False)
    third = member_make(project, "third", login=False)
    split, agreed = ratings
    judgment_submit(comparison_id=split.pk, annotator=annotator, choice="good")
    judgment_submit(comparison_id=split.pk, annotator=other, choice="bad")
    judgment_submit(comparison_id=agreed.pk, annotator=annotator, choice="bad")
    judgment_submit(comparison_id=agreed.pk, annotator=other, choice="bad")
    split.refresh_from_db()
    assert split.status == ComparisonStatus.COMPLETE
    assert not PreferencePair.objects.filter(comparison=split).exists()  # undecided
    assert PreferencePair.objects.get(comparison=agreed).kind == PairKind.BAD
    assert PreferencePair.objects.get(comparison=agreed).agreement == 1.0
    # Never past the overlap.
    with pytest.raises(JudgmentRejected, match="already has all the judgments"):
        judgment_submit(comparison_id=agreed.pk, annotator=third, choice="good")
    assert [item.comparison.pk for item in review_queue(project=project, reason="split")] == [
        split.pk
    ]
    # A reviewer decides it good or bad, never a pair's answer.
    with pytest.raises(JudgmentRejected, match="good or bad"):
        comparison_adjudicate(comparison=split, reviewer=third, choice="a")
    comparison_adjudicate(comparison=split, reviewer=third, choice="good")
    assert PreferencePair.objects.get(comparison=split).kind == PairKind.GOOD
    comparison_send_back(comparison=split, reviewer=third)
    split.refresh_from_db()
    assert split.status == ComparisonStatus.OPEN and split.judgment_count == 0
    assert not PreferencePair.objects.filter(comparison=split).exists()


def test_a_score_on_the_five_point_scale_is_good_from_the_threshold_up(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    _five_point(project, threshold=4)
    project.overlap = 5
    project.save()
    expected = {1: Choice.BAD, 3: Choice.BAD, 4: Choice.GOOD, 5: Choice.GOOD}
    for score, label in expected.items():
        user = member_make(project, f"scorer{score}", login=False)
        judgment = judgment_submit(comparison_id=ratings[0].pk, annotator=user, score=score)
        judgment.refresh_from_db()
        assert (judgment.score, judgment.choice) == (score, label)
    # Ratings made keep their label when the threshold moves (as every setting: judgments
    # keep what they were made under).
    project_settings_update(project=project, rating_threshold=2)
    assert Judgment.objects.get(annotator__username="scorer3").choice == Choice.BAD


def test_a_rating_that_does_not_fit_the_scale_is_refused_and_nothing_changes(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    rating = ratings[0]
    refused = [
        ({"score": 4}, "rates good or bad, not with a score"),
        ({"side": "left"}, "Rate this response good or bad"),
        ({"choice": "tie"}, "Rate this response good or bad"),
        ({"ranks": [1, 2, 3]}, "is a rating: rate it, not ranks"),
        ({"side": "good", "criteria": {"x": "left"}}, "Unknown criteria"),
    ]
    for answer, message in refused:
        with pytest.raises(JudgmentRejected, match=message):
            judgment_submit(comparison_id=rating.pk, annotator=annotator, **answer)
    _five_point(project)
    for answer, message in [
        ({"side": "good"}, "score from 1 to 5"),
        ({"score": 0}, "whole number from 1 to 5"),
        ({"score": 6}, "whole number from 1 to 5"),
    ]:
        with pytest.raises(JudgmentRejected, match=message):
            judgment_submit(comparison_id=rating.pk, annotator=annotator, **answer)
    # A pair takes no score.
    (pair,) = comparisons_make(project, 1)
    with pytest.raises(JudgmentRejected, match="no rating: give no score"):
        judgment_submit(comparison_id=pair.pk, annotator=annotator, score=3)
    assert not Judgment.objects.exists()
    rating.refresh_from_db()
    assert rating.judgment_count == 0 and rating.status == ComparisonStatus.OPEN


def test_criteria_reason_tags_and_rationale_go_with_a_rating(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    project_settings_update(
        project=project,
        criteria=["accuracy"],
        reason_tags=["wrong", "rude"],
        rationale="required",
    )
    with pytest.raises(JudgmentRejected, match="requires a rationale"):
        judgment_submit(comparison_id=ratings[0].pk, annotator=annotator, side="bad")
    judgment = judgment_submit(
        comparison_id=ratings[0].pk,
        annotator=annotator,
        side="bad",
        criteria={"accuracy": "bad"},
        reason_tags=["wrong"],
        rationale="States a wrong sum.",
    )
    judgment.refresh_from_db()
    assert judgment.criteria == {"accuracy": "bad"}
    assert judgment.reason_tags == ["wrong"]
    assert judgment.rationale == "States a wrong sum."


def test_undo_takes_a_rating_back_and_holds_it_again_with_its_score(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    _five_point(project)
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None
    judgment = judgment_submit(comparison_id=assignment.comparison.pk, annotator=annotator, score=5)
    assert PreferencePair.objects.filter(comparison=assignment.comparison).exists()
    judgment_undo(project=project, annotator=annotator, judgment_id=judgment.pk)
    assert not PreferencePair.objects.filter(comparison=assignment.comparison).exists()
    again = assignment_next(project=project, annotator=annotator)
    assert again is not None and again.comparison.pk == assignment.comparison.pk
    redone = judgment_submit(comparison_id=again.comparison.pk, annotator=annotator, score=2)
    assert redone.choice == Choice.BAD
    assert PreferencePair.objects.get(comparison=again.comparison).kind == PairKind.BAD


def test_a_skipped_rating_is_not_offered_again(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    first = assignment_next(project=project, annotator=annotator)
    assert first is not None
    lease = comparison_skip(
        comparison=first.comparison, annotator=annotator, reason="Outside my expertise"
    )
    assert lease.state == LeaseState.SKIPPED
    second = assignment_next(project=project, annotator=annotator, holds_nothing=True)
    assert second is not None and second.comparison.pk != first.comparison.pk
    judgment_submit(comparison_id=second.comparison.pk, annotator=annotator, side="good")
    assert assignment_next(project=project, annotator=annotator, holds_nothing=True) is None


def test_gold_ratings_rechecks_and_quality_figures(project: Project, annotator: User) -> None:
    prompts = list(project.prompts.filter(split="train"))
    plain = ratings_make(prompts[0], ["One.", "Two.", "Three."])
    (gold,) = ratings_make(prompts[1], ["Gold answer."], gold_choice="good")
    with pytest.raises(ValidationFailed, match="expected one of"):
        comparison_gold_set(comparison=plain[0], gold_choice="a")
    project.overlap = 2
    project.save()
    other = member_make(project, "other", login=False)
    for rating, mine, theirs in zip(
        plain, ["good", "good", "bad"], ["good", "bad", "bad"], strict=True
    ):
        judgment_submit(comparison_id=rating.pk, annotator=annotator, side=mine)
        judgment_submit(comparison_id=rating.pk, annotator=other, side=theirs)
    judgment_submit(comparison_id=gold.pk, annotator=annotator, side="good")
    judgment_submit(comparison_id=gold.pk, annotator=other, side="bad")
    # A swapped re-check of a rating re-shows the response: the second answer is compared.
    project.swap_recheck_rate = 1.0
    project.recheck_gap_items = 0
    project.save()
    recheck = assignment_next(project=project, annotator=annotator, rng=random.Random(1))
    assert recheck is not None and recheck.is_recheck and recheck.rated is not None
    again = judgment_submit(comparison_id=recheck.comparison.pk, annotator=annotator, side="bad")
    assert again.kind == JudgmentKind.RECHECK and again.left_was_a
    first = Judgment.objects.get(
        comparison=recheck.comparison, annotator=annotator, kind=JudgmentKind.VOTE
    )
    report = project_quality(project=project)
    assert report.ratings == 8
    assert report.rating_agreement.hits == 2 and report.rating_agreement.n == 3
    # alpha over good/bad with 2 of 3 units agreeing: (pairable values 6)
    assert report.rating_alpha.n == 6 and report.rating_alpha.value is not None
    assert report.alpha.n == 0  # no pair votes
    mine = next(a for a in report.annotators if a.username == annotator.username)
    assert mine.bias.ratings == 4
    assert (mine.bias.rated_good.hits, mine.bias.rated_good.n) == (2, 3)
    assert (mine.bias.gold_correct.hits, mine.bias.gold_correct.n) == (1, 1)
    assert (mine.bias.with_majority.n, mine.bias.with_majority.hits) == (3, 2)
    assert mine.bias.consistent.n == 1
    assert mine.bias.consistent.hits == int(first.choice == Choice.BAD)
    theirs = next(a for a in report.annotators if a.username == "other")
    assert (theirs.bias.gold_correct.hits, theirs.bias.gold_correct.n) == (0, 1)


def test_the_quality_page_shows_the_ratings(
    ratings: list[Comparison], project: Project, annotator: User, lead: User
) -> None:
    judgment_submit(comparison_id=ratings[0].pk, annotator=annotator, side="good")
    judgment_submit(comparison_id=ratings[1].pk, annotator=annotator, side="bad")
    client = Client()
    client.force_login(lead)
    page = client.get(f"/p/{project.slug}/quality/").content.decode()
    assert 'data-stat="rating-alpha"' in page
    assert "rated good (n=2)" in page
    assert '<td class="num" data-ratings>2</td>' in page


def test_kto_exports_ratings_as_one_unpaired_row_each_and_dpo_leaves_them_out(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    judgment_submit(comparison_id=ratings[0].pk, annotator=annotator, side="good")
    judgment_submit(comparison_id=ratings[1].pk, annotator=annotator, side="bad")
    rows = list(export_rows(project=project, format="kto", filters=ExportFilters()))
    assert [(row["completion"][0]["content"], row["label"]) for row in rows] == [
        ("A fine answer.", True),
        ("A poor one.", False),
    ]
    assert rows[0]["prompt"] == ratings[0].prompt.messages
    assert json.loads(json.dumps(rows))  # plain JSON, TRL's unpaired layout
    assert set(rows[0]) == {"prompt", "completion", "label"}
    assert list(export_rows(project=project, format="dpo", filters=ExportFilters())) == []
    # Ratings are no ties: leaving ties out keeps them.
    no_ties = ExportFilters(include_ties=False)
    assert len(list(export_rows(project=project, format="kto", filters=no_ties))) == 2


def test_kto_snapshots_take_ratings_and_other_methods_say_why_they_cannot(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    judgment_submit(comparison_id=ratings[0].pk, annotator=annotator, side="good")
    judgment_submit(comparison_id=ratings[1].pk, annotator=annotator, side="bad")
    with pytest.raises(ValidationFailed, match="ratings train with KTO only"):
        snapshot_create(project=project, filters=SnapshotFilters())
    snapshot = snapshot_create(
        project=project,
        filters=SnapshotFilters(kinds=(PairKind.PREFERENCE, PairKind.GOOD, PairKind.BAD)),
    )
    assert snapshot.n_pairs == 2
    assert sorted(kind for _, _, kind in snapshot.responses.values()) == ["bad", "good"]


def test_the_api_hands_out_a_rating_and_takes_a_label_or_a_score(
    ratings: list[Comparison], project: Project, annotator: User
) -> None:
    client = Client()
    client.force_login(annotator)
    base = f"/api/v1/projects/{project.slug}"
    page = client.get(f"{base}/assignment/").json()
    assignment = page["assignment"]
    assert assignment["kind"] == "rating"
    assert assignment["left"] is None and assignment["responses"] == []
    assert assignment["response"]["text"] in {"A fine answer.", "A poor one."}
    assert page["rating_scale"] == "good_bad"
    url = f"{base}/comparisons/{assignment['comparison_id']}/judgments/"
    bad = client.post(url, {"choice": "good", "score": 3}, content_type="application/json")
    assert bad.status_code == 400 and "not choice and score" in bad.content.decode()
    made = client.post(url, {"choice": "good"}, content_type="application/json")
    assert made.status_code == 201, made.content
    assert made.json()["choice"] == "good" and made.json()["side"] == "good"
    _five_point(project)
    second = client.get(f"{base}/assignment/").json()["assignment"]
    url = f"{base}/comparisons/{second['comparison_id']}/judgments/"
    refused = client.post(url, {"choice": "bad"}, content_type="application/json")
    assert refused.status_code == 422, refused.content
    assert "score from 1 to 5" in refused.content.decode()
    scored = client.post(url, {"score": 5}, content_type="application/json")
    assert scored.status_code == 201 and scored.json()["score"] == 5
    assert scored.json()["choice"] == "good"


def test_the_export_page_and_my_judgment_show_ratings(
    ratings: list[Comparison], project: Project, annotator: User, lead: User
) -> None:
    judgment = judgment_submit(comparison_id=ratings[0].pk, annotator=annotator, side="good")
    judgment_submit(comparison_id=ratings[1].pk, annotator=annotator, side="bad")
    lead_client = Client()
    lead_client.force_login(lead)
    page = lead_client.get(f"/p/{project.slug}/export/").content.decode()
    assert "<strong data-count-good>1</strong> desirable" in page
    assert "<strong data-count-bad>1</strong> undesirable" in page
    client = Client()
    client.force_login(annotator)
    mine = client.get(f"/p/{project.slug}/mine/{judgment.pk}/")
    assert mine.status_code == 200
    body = mine.content.decode()
    assert f'data-rated="{ratings[0].response_a_id}"' in body and "A fine answer." in body
    assert "Good" in body


def test_the_api_shows_a_rating_to_reviewers_with_no_second_response(
    ratings: list[Comparison], project: Project, annotator: User, lead: User
) -> None:
    judgment_submit(comparison_id=ratings[0].pk, annotator=annotator, side="good")
    client = Client()
    client.force_login(lead)
    base = f"/api/v1/projects/{project.slug}"
    listed = client.get(f"{base}/comparisons/").json()["results"]
    assert [c["kind"] for c in listed] == ["rating", "rating"]
    detail = client.get(f"{base}/comparisons/{ratings[0].pk}/").json()
    assert detail["response_b"] is None
    assert detail["response_a"]["text"] == "A fine answer."
    assert detail["pair"]["kind"] == "good"
    assert [j["choice"] for j in detail["judgments"]] == ["good"]
