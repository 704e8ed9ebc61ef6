"""The judging screen shows what was written and records only what was meant (issue 18), in a
real Chromium at a laptop's 1366x768 and a phone's 390x844."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotate.models import (
    Choice,
    Comparison,
    Judgment,
    JudgmentKind,
    Lease,
    LeaseState,
    Project,
    Response,
    Role,
)
from annotate.services.judgments import judgment_submit
from annotate.services.projects import membership_set, project_settings_update
from tests.e2e.conftest import WAIT_MS, Session
from tests.factories import comparison_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}

POEM = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again."
NAMES = "Alice Smith\nBob Jones\nCarol White\nDan Brown"
CODE = "Here is the code:\n\n```python\ndef add(a, b):\n    return a + b\n```"


def _pairs(project: Project, texts: list[tuple[str, str]]) -> list[Comparison]:
    prompts = list(project.prompts.filter(split="train"))
    return [
        comparison_make(prompts[i % len(prompts)], texts=pair, seed=i)
        for i, pair in enumerate(texts)
    ]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _no_horizontal_overflow(session: Session) -> None:
    width = session.page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    if width[0] > width[1]:
        wide = session.page.evaluate(
            """w => Array.from(document.querySelectorAll('body *'))
                .filter(e => e.getBoundingClientRect().right > w + 1)
                .slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' +
                  Math.round(e.getBoundingClientRect().right))""",
            width[1],
        )
        raise AssertionError(f"{session.page.url} is {width[0]} px wide in {width[1]}: {wide}")


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1366", "390"])
def test_model_text_keeps_its_lines_and_a_cut_off_side_says_so(
    open_session: Callable[..., Session], project: Project, annotator: User, viewport: dict
) -> None:
    (first, second) = _pairs(project, [(POEM, NAMES), (CODE, "Short.")])
    Response.objects.filter(pk=first.response_b_id).update(
        finish_reason="length", completion_tokens=200
    )
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=viewport)
    session.expect_pair(first.pk)
    page = session.page
    shown = {
        side: page.locator(f'[data-side="{side}"] .response-body').inner_text()
        for side in ("left", "right")
    }
    # The rendered text has the source's lines: one visible line per source line.
    assert sorted(_lines(t) for t in shown.values()) == sorted([_lines(POEM), _lines(NAMES)])
    names_side = "left" if "Alice" in shown["left"] else "right"
    cut = page.locator("[data-cut-off]")
    expect(cut).to_have_count(1)
    expect(page.locator(f'[data-side="{names_side}"] [data-cut-off]')).to_have_text(
        "cut off at 200 tokens"
    )
    session.press_and_wait_for_pair("t", pair=second.pk)
    code = page.locator("pre code").inner_text()
    assert code.splitlines() == ["def add(a, b):", "    return a + b"]
    expect(page.locator("[data-cut-off]")).to_have_count(0)
    _no_horizontal_overflow(session)
    assert not session.errors, session.errors


def test_keys_on_a_link_do_what_the_browser_does_and_esc_gives_them_back(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    first, second = _pairs(project, [("One.", "Two."), ("Three.", "Four.")])
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=LAPTOP)
    session.expect_pair(first.pk)
    page = session.page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.tagName") == "A"
    for key in ("ArrowRight", "ArrowLeft", "1", "t"):
        page.keyboard.press(key)
    page.wait_for_timeout(300)
    assert Judgment.objects.count() == 0
    expect(page.locator("#pair")).to_have_attribute("data-comparison", str(first.pk))
    page.keyboard.press("Escape")
    session.press_and_wait_for_pair("ArrowRight", pair=second.pk)
    assert Judgment.objects.get(comparison=first).chose_left is False
    assert not session.errors, session.errors


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1366", "390"])
def test_each_new_pair_opens_at_its_top_with_the_prompt_in_view(
    open_session: Callable[..., Session], project: Project, annotator: User, viewport: dict
) -> None:
    long = "\n\n".join(f"Paragraph {i}: " + "words " * 40 for i in range(12))
    first, second = _pairs(project, [(long, long + " more"), (long, long + " again")])
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=viewport)
    session.expect_pair(first.pk)
    page = session.page
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    assert page.evaluate("window.scrollY") > 500
    session.press_and_wait_for_pair("ArrowLeft", pair=second.pk)
    box = page.locator(".prompt-box").bounding_box()
    assert box is not None and 0 <= box["y"] < viewport["height"] / 2, box
    # No frame drawn around the whole pair while it holds the keys.
    assert page.evaluate("getComputedStyle(document.getElementById('pair')).outlineStyle") == (
        "none"
    )
    assert not session.errors, session.errors


def test_strength_comes_after_the_side_with_the_question_by_the_buttons(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    project_settings_update(project=project, use_strength=True)
    first, second, third = _pairs(project, [("A.", "B."), ("C.", "D."), ("E.", "F.")])
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=LAPTOP)
    session.expect_pair(first.pk)
    page = session.page
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.keyboard.press("ArrowLeft")
    prompt = page.locator("[data-strength-prompt]")
    expect(prompt).to_contain_text("Left is better. How much better? Press 7, 8 or 9")
    assert prompt.is_visible() and page.locator(".choices").is_visible()
    assert not [url for url in requests if "/judge/" in url]  # nothing sent without a strength
    session.press_and_wait_for_pair("8", pair=second.pk)
    judgment = Judgment.objects.get(comparison=first)
    assert judgment.chose_left is True and judgment.strength == 2
    # A strength first, then the side: sent at the side's key. Esc drops a waiting side.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Escape")
    expect(page.locator('.choices button[aria-pressed="true"]')).to_have_count(0)
    page.keyboard.press("9")
    session.press_and_wait_for_pair("ArrowRight", pair=third.pk)
    judgment = Judgment.objects.get(comparison=second)
    assert judgment.chose_left is False and judgment.strength == 3
    assert not session.errors, session.errors


def test_a_skip_is_undone_by_u_and_a_changed_judgment_shows_the_earlier_choice(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    first, second, third = _pairs(project, [("A.", "B."), ("C.", "D."), ("E.", "F.")])
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=LAPTOP)
    session.expect_pair(first.pk)
    page = session.page
    reasons = page.locator("[data-skip-reasons]")
    expect(reasons).to_be_hidden()
    page.keyboard.press("s")
    expect(reasons).to_be_visible()
    expect(reasons.locator("button")).to_have_count(4)
    session.press_and_wait_for_pair("2", pair=second.pk)
    lease = Lease.objects.get(comparison=first, annotator=annotator)
    assert (lease.state, lease.skip_reason) == (LeaseState.SKIPPED, "Outside my expertise")
    expect(page.locator("[data-undo]")).to_contain_text("Skipped (Outside my expertise)")

    session.press_and_wait_for_pair("u", pair=first.pk)  # the skipped pair, not an older one
    assert Lease.objects.get(comparison=first, annotator=annotator).state == LeaseState.HELD
    session.press_and_wait_for_pair("ArrowLeft", pair=second.pk)
    expect(page.locator("[data-undo]")).to_contain_text("Last judgment saved")
    session.press_and_wait_for_pair("u", pair=first.pk)
    expect(page.locator('.choices button[value="left"]')).to_have_class("btn btn-primary earlier")
    expect(page.locator("[data-earlier]")).to_be_visible()
    session.press_and_wait_for_pair("ArrowRight", pair=second.pk)
    live = Judgment.objects.get(comparison=first, superseded_at__isnull=True)
    assert live.chose_left is False
    assert third.pk  # still queued
    assert not session.errors, session.errors


def test_a_swapped_recheck_comes_back_only_after_the_projects_gap(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    project_settings_update(project=project, swap_recheck_rate=1.0, recheck_gap_items=3)
    pairs = _pairs(project, [(f"Answer {i}a.", f"Answer {i}b.") for i in range(6)])
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=LAPTOP)
    page = session.page
    shown: list[int] = []
    for _ in range(5):
        expect(page.locator("#pair")).not_to_have_attribute("data-comparison", "", timeout=WAIT_MS)
        shown.append(session.shown_pair())
        page.keyboard.press("ArrowLeft")
        page.wait_for_function(
            "prev => { const p = document.getElementById('pair');"
            " return p && p.dataset.comparison !== prev; }",
            arg=str(shown[-1]),
            timeout=WAIT_MS,
        )
    first = shown[0]
    assert len(set(shown[:4])) == 4 and set(shown) <= {c.pk for c in pairs}  # no re-check yet
    assert shown[4] == first  # then the first pair again, sides swapped
    kinds = Judgment.objects.filter(comparison_id=first).values_list("kind", flat=True)
    assert sorted(kinds) == [JudgmentKind.RECHECK, JudgmentKind.VOTE]
    assert not session.errors, session.errors


def test_a_reviewer_sees_a_split_vote_as_undecided(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    make_user: Callable[..., User],
) -> None:
    project_settings_update(project=project, overlap=2)
    second = make_user("ann2")
    membership_set(project=project, user=second, role=Role.ANNOTATOR)
    (comparison,) = _pairs(project, [("Yes.", "No.")])
    judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=Choice.A)
    judgment_submit(comparison_id=comparison.pk, annotator=second, choice=Choice.B)
    reviewer = make_user("rev")
    membership_set(project=project, user=reviewer, role=Role.REVIEWER)
    session = open_session(reviewer, f"/p/{project.slug}/review/", viewport=LAPTOP)
    row = session.page.locator(f'#review-items tr[data-comparison="{comparison.pk}"]')
    expect(row.locator("[data-undecided]")).to_have_text("Undecided")
    row.get_by_role("link", name=str(comparison.pk), exact=True).click()
    expect(session.page.locator("#outcome")).to_contain_text("Undecided: the votes split evenly")
    assert not session.errors, session.errors


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1366", "390"])
def test_guidelines_typed_in_the_browser_render_with_their_example_and_change_note(
    open_session: Callable[..., Session],
    project: Project,
    annotator: User,
    lead: User,
    viewport: dict,
) -> None:
    (comparison,) = _pairs(project, [("Paris.", "Lyon.")])
    lead_session = open_session(lead, f"/p/{project.slug}/guidelines/", viewport=viewport)
    page = lead_session.page
    # Typed into the textareas: the browser sends CRLF line endings.
    page.fill(
        "#id_body",
        "# Rules\n\nPrefer correct answers.\n\n```example\nPrompt: Capital of France?\n"
        "A: Paris.\nB: Lyon.\nAnswer: A\nWhy: Lyon is not the capital.\n```\n",
    )
    page.fill("#id_changes", "Added a **worked example**.")
    page.get_by_role("button", name="Publish").click()
    expect(page.locator(".flash")).to_contain_text("Published guidelines v2")
    current = page.locator('[data-guideline-version="2"]')
    expect(current.locator(".example-pair")).to_have_count(1)
    expect(current.locator(".guideline-changes strong")).to_have_text("worked example")

    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=viewport)
    session.expect_pair(comparison.pk)
    expect(session.page.locator("#guidelines .example-pair")).to_contain_text("Answer: A is better")
    expect(session.page.locator("#guidelines pre")).to_have_count(0)
    _no_horizontal_overflow(session)
    assert not session.errors + lead_session.errors


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["1366", "390"])
def test_the_pair_gets_the_screen_and_no_page_overflows(
    open_session: Callable[..., Session], project: Project, lead: User, viewport: dict
) -> None:
    _pairs(project, [("A fine answer.", "Another answer.")])
    session = open_session(lead, f"/p/{project.slug}/annotate/", viewport=viewport)
    page = session.page
    nav = page.locator("nav.nav").bounding_box()
    bar = page.locator(".choice-bar").bounding_box()
    assert nav is not None and bar is not None
    assert nav["height"] <= 0.1 * viewport["height"], nav  # one row of navigation
    sizes = page.evaluate(
        "Array.from(document.querySelectorAll('.choice-bar > *, .choices > *'))"
        ".map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().height))"
    )
    assert bar["height"] <= 0.15 * viewport["height"], (bar, sizes)  # a slim choice bar
    _no_horizontal_overflow(session)
    for path in (
        "",
        "annotate/",
        "guidelines/",
        "mine/",
        "quality/",
        "coverage/",
        "review/",
        "rounds/",
        "runs/",
        "runs/new/",
        "rounds/new/",
        "models/",
        "leaderboard/",
        "import/",
        "export/",
        "members/",
        "settings/",
    ):
        answer = page.goto(f"{page.url.split('/p/')[0]}/p/{project.slug}/{path}")
        assert answer is not None and answer.status == 200, path
        _no_horizontal_overflow(session)
    assert not session.errors, session.errors


# The keyboard-only session: 30 pairs ----------------------------------------------------------


def test_an_annotator_works_30_pairs_by_keyboard_and_every_judgment_is_the_key_pressed(
    open_session: Callable[..., Session], project: Project, annotator: User
) -> None:
    project_settings_update(project=project, use_strength=True)
    texts = [(f"Response {i} first.", f"Response {i} second, longer.") for i in range(30)]
    pairs = _pairs(project, texts)
    text_of = {}
    for c in pairs:
        text_of[c.response_a_id] = Response.objects.get(pk=c.response_a_id).text
        text_of[c.response_b_id] = Response.objects.get(pk=c.response_b_id).text
    session = open_session(annotator, f"/p/{project.slug}/annotate/", viewport=LAPTOP)
    page = session.page
    # What each step presses: a side then a strength, a tie, both bad, a skip with a reason,
    # an undo followed by a new choice, and the guidelines toggled in between.
    script = ["left8", "right7", "tie", "bad", "skip1", "left9", "undo", "right8", "?", "tie"]
    expected: dict[int, tuple[str, int | None]] = {}
    skipped: dict[int, str] = {}
    last: int | None = None
    step = 0
    undos = 0
    while page.get_attribute("#pair", "data-comparison"):
        action = script[step % len(script)]
        step += 1
        pair = session.shown_pair()
        comparison = next(c for c in pairs if c.pk == pair)
        left = page.locator('[data-side="left"] .response-body').inner_text().strip()
        left_is_a = left == text_of[comparison.response_a_id]
        if action == "?":
            page.keyboard.press("?")
            continue
        if action == "undo":
            assert last is not None
            session.press_and_wait_for_pair("u", pair=last)
            expected.pop(last)
            undos += 1
            continue
        if action.startswith(("left", "right")):
            side, strength_key = action[:-1], action[-1]
            side_key = "ArrowLeft" if side == "left" else "ArrowRight"
            if page.locator("input[name=strength]:checked").count():
                # A changed judgment shows its earlier strength: the new one first, then the side.
                page.keyboard.press(strength_key)
                page.keyboard.press(side_key)
            else:
                page.keyboard.press(side_key)
                expect(page.locator("[data-strength-prompt]")).to_contain_text("How much better?")
                page.keyboard.press(strength_key)
            on_a = (side == "left") == left_is_a
            expected[pair] = ("a" if on_a else "b", {"7": 1, "8": 2, "9": 3}[strength_key])
        elif action == "tie":
            page.keyboard.press("t")
            expected[pair] = ("tie", None)
        elif action == "bad":
            page.keyboard.press("b")
            expected[pair] = ("both_bad", None)
        else:
            page.keyboard.press("s")
            page.keyboard.press(action[-1])
            skipped[pair] = "Cannot tell which is better"
        page.wait_for_function(
            "prev => { const p = document.getElementById('pair');"
            " return p && p.dataset.comparison !== prev; }",
            arg=str(pair),
            timeout=WAIT_MS,
        )
        if action != "skip1":
            last = pair
        assert step < 80, "the session did not end"
    stored = {
        j.comparison_id: (j.choice, j.strength)
        for j in Judgment.objects.filter(annotator=annotator, superseded_at__isnull=True)
    }
    assert stored == expected
    assert len(expected) + len(skipped) == 30
    for pair, reason in skipped.items():
        assert Lease.objects.get(comparison_id=pair, annotator=annotator).skip_reason == reason
    assert undos >= 3
    superseded = Judgment.objects.filter(annotator=annotator, superseded_at__isnull=False)
    assert superseded.count() == undos
    assert not session.errors, session.errors


def test_the_new_run_form_shows_only_the_chosen_methods_fields(
    open_session: Callable[..., Session], project: Project, lead: User
) -> None:
    from alignment.services.model_versions import model_version_base_ensure

    model_version_base_ensure(project=project)
    session = open_session(lead, f"/p/{project.slug}/runs/new/", viewport=LAPTOP)
    page = session.page
    desirable = page.locator("#id_desirable_weight")
    loss = page.locator("#id_loss_type")
    expect(loss).to_be_visible()  # DPO, the default
    expect(desirable).to_be_hidden()
    page.select_option("#id_method", "kto")
    expect(desirable).to_be_visible()
    expect(loss).to_be_hidden()
    expect(page.locator("#id_learning_rate")).to_be_visible()  # every method's
    assert not session.errors, session.errors
