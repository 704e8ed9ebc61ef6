"""Rankings of K responses as a judging mode: the queue hands out the ranking (never its
implied pairs), each annotator sees their own order, a ranking vote writes one implied
judgment per pair, and aggregation, undo, send-back and review act on the implied pairs."""

from __future__ import annotations

import random

import pytest
from django.contrib.auth.models import User

from annotate.models import (
    Choice,
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    PairKind,
    PreferencePair,
    Project,
)
from annotate.queue import assignment_next
from annotate.services.comparisons import comparison_adjudicate, comparison_send_back
from annotate.services.judgments import JudgmentRejected, judgment_submit, judgment_undo
from annotate.services.rankings import ranking_create
from core.errors import ValidationFailed
from tests.factories import member_make, ranking_make

pytestmark = pytest.mark.django_db

TEXTS = ("Short.", "A little longer.", "Longer than both of those.", "Long " * 9)


@pytest.fixture
def ranking(project: Project) -> Comparison:
    return ranking_make(project.prompts.filter(split="train").first(), TEXTS)


def _texts_ranked(assignment_shown: tuple, order: list[str]) -> list[int]:
    """The ranks, in the order shown, that put the texts in `order` (best first)."""
    return [order.index(response.text) + 1 for response in assignment_shown]


def test_it_creates_one_implied_pair_per_two_responses(ranking: Comparison) -> None:
    implied = list(ranking.implied.order_by("id"))
    assert len(ranking.responses) == 4
    assert len(implied) == 6
    assert {(c.response_a_id, c.response_b_id) for c in implied} == {
        (a, b) for i, a in enumerate(ranking.responses) for b in ranking.responses[i + 1 :]
    }


def test_it_refuses_a_ranking_of_too_few_or_too_many_responses(project: Project) -> None:
    prompt = project.prompts.first()
    with pytest.raises(ValidationFailed, match="3 to 6 responses, not 2"):
        ranking_make(prompt, TEXTS[:2])
    with pytest.raises(ValidationFailed, match="3 to 6 responses, not 7"):
        ranking_make(prompt, [f"Answer {i}" for i in range(7)])
    assert not Comparison.objects.filter(project=project).exists()


def test_it_hands_out_the_ranking_and_never_its_implied_pairs(
    ranking: Comparison, project: Project, annotator: User
) -> None:
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None and assignment.comparison.pk == ranking.pk
    assert sorted(r.pk for r in assignment.shown) == sorted(ranking.responses)
    judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=[1, 2, 3, 4])
    assert assignment_next(project=project, annotator=annotator) is None


def test_each_annotator_sees_an_order_of_their_own_kept_across_refreshes(
    ranking: Comparison, project: Project, make_user
) -> None:
    project.overlap = 8
    project.save()
    orders = set()
    for i in range(8):
        user = member_make(project, f"ranker{i}", login=False)
        first = assignment_next(project=project, annotator=user)
        again = assignment_next(project=project, annotator=user)
        assert first is not None and again is not None
        assert [r.pk for r in first.shown] == [r.pk for r in again.shown]
        orders.add(tuple(r.pk for r in first.shown))
    assert len(orders) > 1


def test_a_ranking_vote_records_the_order_shown_and_implies_every_pair(
    ranking: Comparison, project: Project, annotator: User
) -> None:
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None
    best_first = ["Short.", "A little longer.", "Longer than both of those.", "Long " * 9]
    ranks = _texts_ranked(assignment.shown, best_first)
    judgment = judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=ranks)
    assert judgment.choice == Choice.RANKED
    assert judgment.shown == [r.pk for r in assignment.shown]
    assert judgment.ranks == ranks
    implied = Judgment.objects.filter(source=judgment)
    assert implied.count() == 6 and {j.kind for j in implied} == {JudgmentKind.IMPLIED}
    ranking.refresh_from_db()
    assert ranking.status == ComparisonStatus.COMPLETE and ranking.judgment_count == 1
    pairs = PreferencePair.objects.filter(comparison__ranking=ranking)
    assert pairs.count() == 6
    for pair in pairs:
        assert pair.kind == PairKind.PREFERENCE
        assert best_first.index(pair.chosen.text) < best_first.index(pair.rejected.text)
    # Position as shown: `left_was_a` says whether a was shown before b.
    position = {pk: i for i, pk in enumerate(judgment.shown)}
    for j in implied.select_related("comparison"):
        c = j.comparison
        assert j.left_was_a == (position[c.response_a_id] < position[c.response_b_id])


def test_tied_ranks_imply_ties_and_all_bad_implies_both_bad(
    project: Project, annotator: User, make_user
) -> None:
    prompts = list(project.prompts.filter(split="train"))
    tied = ranking_make(prompts[0], TEXTS[:3])
    judgment_submit(comparison_id=tied.pk, annotator=annotator, ranks=[1, 1, 3])
    kinds = sorted(
        PreferencePair.objects.filter(comparison__ranking=tied).values_list("kind", flat=True)
    )
    assert kinds == [PairKind.PREFERENCE, PairKind.PREFERENCE, PairKind.TIE]
    judgment = Judgment.objects.get(comparison=tied, kind=JudgmentKind.VOTE)
    assert judgment.ranks == [1, 1, 2]  # made dense
    bad = ranking_make(prompts[1], TEXTS[:3])
    judgment_submit(comparison_id=bad.pk, annotator=annotator, choice="both_bad")
    kinds = set(
        PreferencePair.objects.filter(comparison__ranking=bad).values_list("kind", flat=True)
    )
    assert kinds == {PairKind.BOTH_BAD}


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ([1, 2, 3], "one rank per response shown, in the order shown: 4 ranks"),
        ([1, 2, 3, 5], "whole number from 1 to 4, not 5"),
        ([1, 2, 3, "x"], "whole number from 1 to 4, not 'x'"),
        ([0, 1, 2, 3], "whole number from 1 to 4, not 0"),
    ],
)
def test_it_refuses_bad_ranks_naming_the_problem_and_stores_nothing(
    ranking: Comparison, annotator: User, ranks: list, message: str
) -> None:
    with pytest.raises(JudgmentRejected, match=message):
        judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=ranks)
    assert not Judgment.objects.exists()
    ranking.refresh_from_db()
    assert ranking.judgment_count == 0


def test_a_ranking_needs_ranks_and_a_pair_refuses_them(
    ranking: Comparison, project: Project, annotator: User
) -> None:
    with pytest.raises(JudgmentRejected, match="is a ranking: give ranks"):
        judgment_submit(comparison_id=ranking.pk, annotator=annotator, choice="a")
    from tests.factories import comparison_make

    pair = comparison_make(project.prompts.first())
    with pytest.raises(JudgmentRejected, match="is a pair: choose a side, not ranks"):
        judgment_submit(comparison_id=pair.pk, annotator=annotator, ranks=[1, 2])


def test_annotators_who_disagree_on_a_pair_leave_only_that_pair_undecided(
    ranking: Comparison, project: Project, annotator: User
) -> None:
    project.overlap = 2
    project.save()
    other = member_make(project, "other", login=False)
    order = ["Short.", "A little longer.", "Longer than both of those.", "Long " * 9]
    swapped = [order[1], order[0], *order[2:]]  # disagrees on the first two only
    for user, wanted in ((annotator, order), (other, swapped)):
        assignment = assignment_next(project=project, annotator=user)
        assert assignment is not None
        judgment_submit(
            comparison_id=ranking.pk,
            annotator=user,
            ranks=_texts_ranked(assignment.shown, order if user == annotator else wanted),
        )
    pairs = PreferencePair.objects.filter(comparison__ranking=ranking)
    assert pairs.count() == 5  # the pair they split on has none: undecided
    assert {p.agreement for p in pairs} == {1.0}
    undecided = ranking.implied.exclude(pair__isnull=False).get()
    assert {undecided.response_a.text, undecided.response_b.text} == set(order[:2])
    # A reviewer decides that one pair, as any pair.
    lead = project.memberships.get(role="lead").user
    comparison_adjudicate(comparison=undecided, reviewer=lead, choice="b")
    assert PreferencePair.objects.filter(comparison__ranking=ranking).count() == 6


def test_undo_takes_back_the_ranking_and_every_pair_it_made(
    ranking: Comparison, project: Project, annotator: User
) -> None:
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None
    judgment = judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=[4, 3, 2, 1])
    judgment_undo(project=project, annotator=annotator, judgment_id=judgment.pk)
    assert not Judgment.objects.filter(superseded_at__isnull=True).exists()
    assert not PreferencePair.objects.exists()
    assert set(ranking.implied.values_list("judgment_count", flat=True)) == {0}
    again = assignment_next(project=project, annotator=annotator)
    assert again is not None and again.comparison.pk == ranking.pk
    assert [r.pk for r in again.shown] == judgment.shown  # the same order comes back
    rejudged = judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=[1, 2, 3, 4])
    assert rejudged.ranks == [1, 2, 3, 4]
    assert PreferencePair.objects.filter(comparison__ranking=ranking).count() == 6


def test_sending_back_an_implied_pair_sends_back_its_ranking(
    ranking: Comparison, project: Project, annotator: User, lead: User
) -> None:
    judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=[1, 2, 3, 4])
    comparison_send_back(comparison=ranking.implied.first(), reviewer=lead)
    ranking.refresh_from_db()
    assert ranking.status == ComparisonStatus.OPEN and ranking.judgment_count == 0
    assert not PreferencePair.objects.exists()
    assert not Judgment.objects.filter(superseded_at__isnull=True).exists()
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None and assignment.comparison.pk == ranking.pk


def test_a_retried_ranking_with_its_key_is_stored_once(
    ranking: Comparison, annotator: User
) -> None:
    first = judgment_submit(
        comparison_id=ranking.pk, annotator=annotator, ranks=[1, 2, 3, 4], idempotency_key="k1"
    )
    again = judgment_submit(
        comparison_id=ranking.pk, annotator=annotator, ranks=[1, 2, 3, 4], idempotency_key="k1"
    )
    assert again.pk == first.pk
    assert Judgment.objects.filter(kind=JudgmentKind.VOTE).count() == 1
    assert Judgment.objects.filter(kind=JudgmentKind.IMPLIED).count() == 6


def test_a_swapped_recheck_shows_the_order_reversed_and_implies_nothing(
    project: Project, annotator: User
) -> None:
    project.swap_recheck_rate = 1.0
    project.recheck_gap_items = 0
    project.save()
    prompts = list(project.prompts.filter(split="train"))
    first = ranking_make(prompts[0], TEXTS)
    assignment = assignment_next(project=project, annotator=annotator, rng=random.Random(1))
    assert assignment is not None and not assignment.is_recheck
    vote = judgment_submit(comparison_id=first.pk, annotator=annotator, ranks=[1, 2, 3, 4])
    recheck = assignment_next(project=project, annotator=annotator, rng=random.Random(1))
    assert recheck is not None and recheck.is_recheck and recheck.comparison.pk == first.pk
    assert [r.pk for r in recheck.shown] == vote.shown[::-1]
    again = judgment_submit(comparison_id=first.pk, annotator=annotator, ranks=[4, 3, 2, 1])
    assert again.kind == JudgmentKind.RECHECK and not again.implied.exists()
    assert Judgment.objects.filter(kind=JudgmentKind.IMPLIED).count() == 6
    # The same order of the responses both times: consistent on each of the 6 pairs.
    from annotate.quality import project_quality

    consistent = project_quality(project=project).overall.consistent
    assert (consistent.hits, consistent.n) == (6, 6)


def test_ranking_create_needs_one_prompt(project: Project) -> None:
    first, second = list(project.prompts.filter(split="train"))[:2]
    a = ranking_make(first, TEXTS[:3])
    b = ranking_make(second, TEXTS[:3])
    responses = [*Comparison.objects.get(pk=a.pk).implied.first().prompt.responses.all()[:2]]
    responses.append(b.response_a)
    with pytest.raises(ValidationFailed, match="same prompt"):
        ranking_create(responses=responses, round_number=1)


def _ranked(project: Project, annotator: User, prompt_index: int, ranks_by_text: list[str]):
    """A ranking of TEXTS on a training prompt, judged best-first as `ranks_by_text` says."""
    prompt = list(project.prompts.filter(split="train"))[prompt_index]
    ranking = ranking_make(prompt, TEXTS)
    assignment = assignment_next(project=project, annotator=annotator)
    assert assignment is not None and assignment.comparison.pk == ranking.pk
    judgment_submit(
        comparison_id=ranking.pk,
        annotator=annotator,
        ranks=_texts_ranked(assignment.shown, ranks_by_text),
    )
    return ranking


def test_dpo_export_has_every_implied_pair_as_trl_takes_it(
    project: Project, annotator: User
) -> None:
    from trl.data_utils import is_conversational

    from annotate.exports import ExportFilters, export_rows

    best_first = [TEXTS[2], TEXTS[0], TEXTS[3], TEXTS[1]]
    _ranked(project, annotator, 0, best_first)
    rows = list(export_rows(project=project, format="dpo", filters=ExportFilters()))
    assert len(rows) == 6
    for row in rows:
        assert is_conversational(row)
        chosen, rejected = row["chosen"][0]["content"], row["rejected"][0]["content"]
        assert best_first.index(chosen) < best_first.index(rejected)


def test_kto_export_takes_a_rankings_best_and_worst(project: Project, annotator: User) -> None:
    from annotate.exports import ExportFilters, export_rows

    best_first = [TEXTS[2], TEXTS[0], TEXTS[3], TEXTS[1]]
    _ranked(project, annotator, 0, best_first)
    bad = ranking_make(list(project.prompts.filter(split="train"))[1], TEXTS)
    judgment_submit(comparison_id=bad.pk, annotator=annotator, choice="both_bad")
    rows = list(export_rows(project=project, format="kto", filters=ExportFilters()))
    labelled = [(row["completion"][0]["content"], row["label"]) for row in rows]
    assert labelled[:2] == [(TEXTS[2], True), (TEXTS[1], False)]
    assert sorted(labelled[2:]) == sorted((text, False) for text in TEXTS)  # all bad
    no_ties = list(
        export_rows(project=project, format="kto", filters=ExportFilters(include_ties=False))
    )
    assert len(no_ties) == 2


def test_best_and_worst_need_to_stand_out() -> None:
    from annotate.exports import ranking_best_worst

    # 1 > 2 = 3: no single worst.
    assert ranking_best_worst(
        [("preference", 1, 2), ("preference", 1, 3), ("tie", 2, 3)], [1, 2, 3]
    ) == ([1], [])
    # Level everywhere: nothing stands out.
    assert ranking_best_worst([("tie", 1, 2), ("tie", 1, 3), ("tie", 2, 3)], [1, 2, 3]) == ([], [])


def test_quality_reports_rankings_pair_by_pair_with_tau_and_position_bias(
    project: Project, annotator: User, lead: User
) -> None:
    from annotate.agreement import kendall_tau_b
    from annotate.quality import project_quality
    from tests.factories import client_make

    project.overlap = 2
    project.save()
    other = member_make(project, "other", login=False)
    prompts = list(project.prompts.filter(split="train"))
    rankings = [ranking_make(prompts[i], TEXTS) for i in range(3)]
    order = list(TEXTS)
    for ranking in rankings:
        # `annotator` ranks as shown (all position bias); `other` by the texts' order, the
        # same as `annotator` on the first ranking only.
        mine = assignment_next(project=project, annotator=annotator)
        assert mine is not None
        judgment_submit(comparison_id=mine.comparison.pk, annotator=annotator, ranks=[1, 2, 3, 4])
        theirs = assignment_next(project=project, annotator=other)
        assert theirs is not None and theirs.comparison.pk == mine.comparison.pk
        wanted = (
            [next(r for r in mine.shown if r.pk == s.pk) for s in theirs.shown]
            if ranking is rankings[0]
            else None
        )
        ranks = (
            [[r.pk for r in mine.shown].index(s.pk) + 1 for s in theirs.shown]
            if wanted
            else _texts_ranked(theirs.shown, order)
        )
        judgment_submit(comparison_id=theirs.comparison.pk, annotator=other, ranks=ranks)
    report = project_quality(project=project)
    assert report.judgments == 6 and report.rankings == 6
    assert report.alpha.n == 2 * 6 * 3  # two votes on each of the 18 implied pairs
    assert report.alpha.value is not None
    by_name = {a.username: a.bias for a in report.annotators}
    assert by_name["ann"].position_tau.value == 1.0  # always ranked as shown
    assert by_name["ann"].left_chosen.value == 1.0  # the earlier shown always won
    assert by_name["ann"].tau_with_others.n == 3
    # Their tau, ranking by ranking, as annotate.agreement computes it: 1 on the first.
    taus = []
    for ranking in rankings:
        mine, theirs = (
            Judgment.objects.get(comparison=ranking, annotator=user, kind=JudgmentKind.VOTE)
            for user in (annotator, other)
        )
        taus.append(
            kendall_tau_b(
                dict(zip(mine.shown, mine.ranks, strict=True)),
                dict(zip(theirs.shown, theirs.ranks, strict=True)),
            )
        )
    assert taus[0].value == 1.0
    expected = sum(t.value for t in taus if t.value is not None) / 3
    assert by_name["ann"].tau_with_others.value == pytest.approx(expected)
    assert by_name["other"].tau_with_others.value == pytest.approx(expected)
    page = client_make(lead).get(f"/p/{project.slug}/quality/")
    assert page.status_code == 200
    assert b'data-stat="tau"' in page.content and b'data-stat="position-tau"' in page.content


def test_a_ranking_is_adjudicated_pair_by_pair_and_its_pairs_lineage_shows_the_ranks(
    ranking: Comparison, project: Project, annotator: User, lead: User
) -> None:
    from tests.factories import client_make

    judgment = judgment_submit(comparison_id=ranking.pk, annotator=annotator, ranks=[2, 1, 3, 4])
    with pytest.raises(JudgmentRejected, match="adjudicate the pairs it implies"):
        comparison_adjudicate(comparison=ranking, reviewer=lead, choice="a")
    implied = ranking.implied.first()
    client = client_make(lead)
    page = client.get(f"/p/{project.slug}/lineage/comparison/{implied.pk}/").content.decode()
    assert f"Implied by ranking {ranking.pk}" in page
    assert f"ranking judgment {judgment.pk}: ranks {', '.join(map(str, judgment.ranks))}" in page
    review = client.get(f"/p/{project.slug}/review/{implied.pk}/").content.decode()
    assert f"ranking {ranking.pk}</a>" in review and "data-implied" in review


def test_a_gold_ranking_goes_to_everyone_and_scores_each_implied_pair(
    project: Project, annotator: User, lead: User
) -> None:
    from annotate.quality import project_quality
    from tests.factories import client_make

    project.gold_rate = 1.0
    project.save()
    ranking = ranking_make(project.prompts.filter(split="train").first(), TEXTS)
    client = client_make(lead)
    # A lead gives the known order on the ranking's review page: TEXTS best first.
    answer = {f"rank-{pk}": str(i) for i, pk in enumerate(ranking.responses, start=1)}
    bad = client.post(
        f"/p/{project.slug}/review/{ranking.pk}/gold/",
        {**answer, f"rank-{ranking.responses[0]}": "9"},
    )
    assert bad.status_code == 422 and b"whole number from 1 to 4, not 9" in bad.content
    ranking.refresh_from_db()
    assert not ranking.is_gold
    assert client.post(f"/p/{project.slug}/review/{ranking.pk}/gold/", answer).status_code == 302
    ranking.refresh_from_db()
    assert ranking.gold_choice == Choice.RANKED
    assert set(ranking.implied.values_list("gold_choice", flat=True)) == {Choice.A}
    page = client.get(f"/p/{project.slug}/review/{ranking.pk}/").content.decode()
    assert 'id="implied"' in page and f'name="rank-{ranking.responses[3]}"' in page
    other = member_make(project, "other", login=False)
    for user, order in ((annotator, list(TEXTS)), (other, list(TEXTS[::-1]))):
        assignment = assignment_next(project=project, annotator=user)
        assert assignment is not None and assignment.comparison.pk == ranking.pk
        judgment_submit(
            comparison_id=ranking.pk, annotator=user, ranks=_texts_ranked(assignment.shown, order)
        )
    report = {a.username: a.bias for a in project_quality(project=project).annotators}
    assert (report["ann"].gold_correct.hits, report["ann"].gold_correct.n) == (6, 6)
    assert (report["other"].gold_correct.hits, report["other"].gold_correct.n) == (0, 6)
    assert not PreferencePair.objects.exists()  # a gold item makes no training pair
