"""Quality controls in a real Chromium: skip, undo, gold, guideline changes, review, strength."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Dialog, expect

from annotate.coverage import coverage_refresh
from annotate.models import (
    Comparison,
    ComparisonStatus,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    Membership,
    PairKind,
    PreferencePair,
    Project,
    Role,
)
from annotate.services.comparisons import comparison_gold_set
from annotate.services.judgments import judgment_submit
from annotate.services.projects import guideline_publish, membership_set, project_settings_update
from tests.e2e.conftest import WAIT_MS, Session
from tests.factories import comparison_make, embed_bag_of_words

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _voted_by_two(
    project: Project, first: User, second: User, votes: list[tuple[str, str]]
) -> list[Comparison]:
    """Overlap 2, and one comparison per (first's, second's) vote, judged by both."""
    project_settings_update(project=project, overlap=2)
    membership_set(project=project, user=second, role=Role.ANNOTATOR)
    comparisons = _comparisons(project, len(votes))
    for comparison, (x, y) in zip(comparisons, votes, strict=True):
        judgment_submit(comparison_id=comparison.pk, annotator=first, choice=x)
        judgment_submit(comparison_id=comparison.pk, annotator=second, choice=y)
    return comparisons


def _comparisons(project: Project, count: int) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train")[:count])
    return [
        comparison_make(prompt, texts=(f"Answer A{i}.", f"Answer B{i}."), seed=i)
        for i, prompt in enumerate(prompts)
    ]


def test_it_skips_a_pair_with_the_chosen_reason(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    first, second = _comparisons(project, 2)
    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    session.expect_pair(first.pk)

    session.page.keyboard.press("s")  # the reasons show by the buttons, each with its key
    expect(session.page.get_by_role("button", name="2 Outside my expertise")).to_be_visible()
    session.press_and_wait_for_pair("2", pair=second.pk)

    lease = Lease.objects.get(comparison=first, annotator=annotator)
    assert lease.state == LeaseState.SKIPPED
    assert lease.skip_reason == "Outside my expertise"
    assert not Judgment.objects.filter(comparison=first).exists()
    assert not session.errors, session.errors


def test_it_undoes_a_judgment_and_takes_the_new_one(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    first, second = _comparisons(project, 2)
    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    session.expect_pair(first.pk)
    left_before = session.left_text()

    session.press_and_wait_for_pair("ArrowLeft", pair=second.pk)
    undone = Judgment.objects.get(comparison=first, annotator=annotator)
    assert undone.chose_left is True
    expect(session.page.locator("[data-undo]")).to_be_visible()

    session.press_and_wait_for_pair("u", pair=first.pk)
    assert session.left_text() == left_before  # the same sides as before
    undone.refresh_from_db()
    first.refresh_from_db()
    assert undone.superseded_at is not None
    assert first.status == ComparisonStatus.OPEN
    assert first.judgment_count == 0

    session.press_and_wait_for_pair("ArrowRight", pair=second.pk)
    live = Judgment.objects.get(comparison=first, annotator=annotator, superseded_at__isnull=True)
    assert live.chose_left is False
    assert live.choice != undone.choice
    assert Judgment.objects.filter(comparison=first, superseded_at__isnull=False).count() == 1
    first.refresh_from_db()
    assert first.judgment_count == 1
    assert first.status == ComparisonStatus.COMPLETE
    assert not session.errors, session.errors


def test_it_serves_gold_first_without_saying_so(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    project_settings_update(project=project, gold_rate=1.0)
    *normal, gold = _comparisons(project, 3)
    comparison_gold_set(comparison=gold, gold_choice="a")
    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    session.expect_pair(gold.pk)

    assert "gold" not in session.page.locator("body").inner_text().lower()
    assert "gold" not in session.page.locator("#pair").inner_html().lower()

    session.press_and_wait_for_pair("ArrowLeft", pair=normal[0].pk)
    judgment = Judgment.objects.get(comparison=gold, annotator=annotator)
    assert judgment.kind == JudgmentKind.VOTE
    assert judgment.superseded_at is None
    gold.refresh_from_db()
    assert gold.status == ComparisonStatus.OPEN  # everyone answers gold, overlap or not
    assert "gold" not in session.page.locator("body").inner_text().lower()
    assert not session.errors, session.errors


def test_it_shows_what_changed_in_the_guidelines_until_acknowledged(
    open_session: Callable[..., Session], project: Project, annotator: User, lead: User
) -> None:
    first, second, third = _comparisons(project, 3)
    membership = Membership.objects.get(project=project, user=annotator)
    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    session.expect_pair(first.pk)
    banner = session.page.locator("[data-guideline-banner]")
    expect(banner).to_contain_text("Please read the guidelines (v1)")

    session.page.get_by_role("button", name="Got it").click()
    expect(banner).to_have_count(0, timeout=WAIT_MS)
    expect(session.page.locator("#pair")).to_have_attribute("data-comparison", str(first.pk))
    membership.refresh_from_db()
    assert membership.guideline_seen_version == 1

    guideline_publish(
        project=project,
        body="# Be helpful\nPrefer short answers.",
        changes="Prefer shorter answers",
        created_by=lead,
    )
    session.page.locator("#pair").focus()
    session.press_and_wait_for_pair("ArrowLeft", pair=second.pk)
    expect(banner).to_contain_text("The guidelines changed (now v2)")
    expect(banner).to_contain_text("Prefer shorter answers")
    # The guidelines beside the pair follow, without a reload.
    expect(session.page.locator("#guidelines")).to_contain_text("Guidelines v2")
    expect(session.page.locator("#guidelines")).to_contain_text("Prefer short answers.")

    session.page.keyboard.press("g")
    expect(banner).to_have_count(0, timeout=WAIT_MS)
    session.expect_pair(second.pk, swapped=True)
    membership.refresh_from_db()
    assert membership.guideline_seen_version == 2

    session.press_and_wait_for_pair("ArrowLeft", pair=third.pk)
    expect(banner).to_have_count(0)
    assert not session.errors, session.errors


def test_it_lets_a_lead_adjudicate_and_send_back_a_split_vote(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    lead: User,
    make_user: Callable[..., User],
) -> None:
    comparison, other = _voted_by_two(
        project, annotator, make_user("ann2"), [("a", "b"), ("b", "a")]
    )
    originals = list(Judgment.objects.filter(comparison=comparison).values_list("pk", flat=True))

    session = open_session(lead, f"/p/{project.slug}/review/")
    page = session.page
    expect(page.locator('.tabs a[aria-current="page"]')).to_have_text("Split votes")
    row = page.locator(f'#review-items tr[data-comparison="{comparison.pk}"]')
    expect(row).to_be_visible()
    row.get_by_role("link", name=str(comparison.pk), exact=True).click()
    page.wait_for_url(f"**/p/{project.slug}/review/{comparison.pk}/")

    rows = page.locator("#judgments tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="ann2")).to_have_count(1)
    expect(rows.filter(has_text=annotator.username)).to_have_count(2)  # "ann" is in "ann2"

    # No answer is chosen for the reviewer; the next disputed pair is a click away.
    expect(page.locator("#adjudicate-form select[name=choice]")).to_have_value("")
    expect(page.locator("[data-next-disputed]")).to_have_attribute(
        "href", f"/p/{project.slug}/review/{other.pk}/"
    )
    page.select_option("#adjudicate-form select[name=choice]", label="A better")
    page.locator("#adjudicate-form").get_by_role("button", name="Decide").click()
    expect(page.locator("#outcome")).to_contain_text(f"decided by {lead.username}")
    pair = PreferencePair.objects.get(comparison=comparison)
    assert pair.kind == PairKind.PREFERENCE
    assert pair.chosen_id == comparison.response_a_id
    assert (
        Judgment.objects.filter(pk__in=originals, superseded_at__isnull=True).count() == 2
    )  # the annotators' judgments stay as they were

    asked: list[str] = []

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss() if len(asked) == 1 else dialog.accept()

    page.on("dialog", answer)
    page.get_by_role("button", name="Send back for re-annotation").click()  # dismissed
    page.wait_for_timeout(300)
    assert PreferencePair.objects.filter(comparison=comparison).exists()
    page.get_by_role("button", name="Send back for re-annotation").click()  # confirmed
    assert asked and asked[0].startswith(f"Send comparison {comparison.pk} back?")
    expect(page.get_by_text("Sent back: the pair is in the queue again")).to_be_visible()
    comparison.refresh_from_db()
    assert comparison.status == ComparisonStatus.OPEN
    assert comparison.judgment_count == 0
    assert comparison.sent_back_count == 1
    judgments = Judgment.objects.filter(comparison=comparison)
    assert judgments.count() == 3  # two votes and the adjudication, all on record
    assert not judgments.filter(superseded_at__isnull=True).exists()
    assert not PreferencePair.objects.filter(comparison=comparison).exists()
    assert not session.errors, session.errors


def test_it_takes_strength_and_criteria_by_keyboard(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    project_settings_update(project=project, use_strength=True, criteria=["helpfulness"])
    first, second = _comparisons(project, 2)
    session = open_session(annotator, f"/p/{project.slug}/annotate/")
    page = session.page
    session.expect_pair(first.pk)

    page.keyboard.press("8")  # a strength chosen before the side waits for it
    expect(page.locator('input[name="strength"][value="2"]')).to_be_checked()
    # Arrows on a criterion's radios choose within it and judge nothing.
    page.focus('input[name="criterion-helpfulness"][value="left"]')
    page.keyboard.press("ArrowRight")
    expect(page.locator('input[name="criterion-helpfulness"][value="right"]')).to_be_checked()
    assert not Judgment.objects.exists()
    page.keyboard.press("Escape")  # the keys go back to the pair
    session.press_and_wait_for_pair("ArrowLeft", pair=second.pk)

    judgment = Judgment.objects.get(comparison=first, annotator=annotator)
    assert judgment.chose_left is True
    assert judgment.strength == 2
    right = "b" if judgment.left_was_a else "a"
    assert judgment.criteria == {"helpfulness": right}
    assert not session.errors, session.errors


def test_it_fits_a_narrow_screen(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    prompts = list(project.prompts.filter(split="train")[:2])
    long_line = "x" * 300
    first = comparison_make(
        prompts[0],
        texts=(
            f"A long token: {long_line}\n\n```\n{'code ' * 60}\n```",
            "See https://example.invalid/" + "path/" * 40,
        ),
        seed=1,
    )
    second = comparison_make(prompts[1], seed=2)
    session = open_session(
        annotator, f"/p/{project.slug}/annotate/", viewport={"width": 390, "height": 844}
    )
    page = session.page
    session.expect_pair(first.pk)

    def assert_no_horizontal_scroll() -> None:
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        client_width = page.evaluate("document.documentElement.clientWidth")
        assert scroll_width <= client_width, (scroll_width, client_width)

    assert_no_horizontal_scroll()
    for value in ("left", "right", "tie"):
        expect(page.locator(f'.choices button[value="{value}"]')).to_be_visible()
    page.locator('.choices button[value="left"]').click()
    session.expect_pair(second.pk, swapped=True)
    assert_no_horizontal_scroll()

    judgment = Judgment.objects.get(comparison=first, annotator=annotator)
    assert judgment.chose_left is True
    assert not session.errors, session.errors


def test_it_draws_the_quality_charts_for_a_lead(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    lead: User,
    make_user: Callable[..., User],
) -> None:
    _voted_by_two(project, annotator, make_user("ann2"), [("a", "a"), ("a", "b"), ("b", "b")])

    session = open_session(lead, f"/p/{project.slug}/quality/")
    page = session.page
    expect(page.locator('[data-stat="pairwise"]')).to_have_text("67%")
    expect(page.locator("#annotator-quality tbody tr")).to_have_count(2)
    # Every chart was drawn by the page's own script (Chart.js under the CSP, no inline code).
    drawn = page.evaluate(
        "Array.from(document.querySelectorAll('[data-quality-chart]'))"
        ".map(canvas => Boolean(window.Chart && window.Chart.getChart(canvas)))"
    )
    assert drawn == [True, True, True, True]
    page.select_option("#f-guideline", "1")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**guideline=1**")
    expect(page.locator("#f-guideline")).to_have_value("1")
    assert not session.errors, session.errors


def test_it_draws_the_coverage_charts_for_a_reviewer(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    make_user: Callable[..., User],
) -> None:
    reviewer = make_user("rev")
    membership_set(project=project, user=reviewer, role=Role.REVIEWER)
    comparisons = _comparisons(project, 3)
    for comparison in comparisons:
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice="a")
    stored = coverage_refresh(project=project, embed=embed_bag_of_words)
    weak = stored[0].data["weak_clustering"]

    session = open_session(reviewer, f"/p/{project.slug}/coverage/")
    page = session.page
    expect(page.locator('[data-stat="prompts"]')).to_have_text(str(project.prompts.count()))
    expect(page.locator("[data-weak-clustering]")).to_have_count(1 if weak else 0)
    expect(page.locator('[data-stat="pairs"]')).to_have_text("3 (preference 3, tie 0, both_bad 0)")
    drawn = page.evaluate(
        "Array.from(document.querySelectorAll('[data-coverage-chart]'))"
        ".map(canvas => Boolean(window.Chart && window.Chart.getChart(canvas)))"
    )
    assert drawn == [True, True, True, True, True]
    page.select_option("#scope", "round:1")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**scope=round%3A1**")
    expect(page.locator('[data-stat="prompts"]')).to_have_text("3")
    assert not session.errors, session.errors


def test_it_draws_a_negative_agreement_below_zero(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    lead: User,
    make_user: Callable[..., User],
) -> None:
    votes = [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]
    _voted_by_two(project, annotator, make_user("ann2"), votes)
    session = open_session(lead, f"/p/{project.slug}/quality/")
    lowest = session.page.evaluate(
        "Array.from(document.querySelectorAll('[data-quality-chart=\"rounds\"]'))"
        ".map(canvas => window.Chart.getChart(canvas).scales.y.min)"
    )
    assert lowest and lowest[0] < 0, lowest  # systematic disagreement shows as alpha < 0
    assert not session.errors, session.errors
