"""An annotator logs in and judges pairs with the keyboard in a real Chromium."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotate.models import Judgment, Project
from tests.factories import comparison_make

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

HOSTILE = (
    '<script>window.pwned = 1</script>\n\n<img src=x onerror="window.pwned = 2">\n\n'
    '<a href="#" hx-get="/admin/" hx-trigger="load">hx</a> [link](javascript:window.pwned=3) '
    "![pixel](http://tracker.invalid/p.png)"
)


def test_it_lets_an_annotator_judge_by_keyboard(
    live_server, browser, project: Project, annotator: User
) -> None:
    prompts = list(project.prompts.filter(split="train")[:3])
    comparisons = [
        comparison_make(prompts[0], texts=(HOSTILE, "A calm answer."), seed=1),
        comparison_make(prompts[1], texts=("Two plus two is four.", "It is 5."), seed=2),
        comparison_make(prompts[2], texts=("Yes.", "No."), seed=3),
    ]
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    page.goto(f"{live_server.url}/login/?next=/p/{project.slug}/annotate/")
    page.fill("#id_username", annotator.username)
    page.fill("#id_password", "pw-" + annotator.username)
    page.press("#id_password", "Enter")
    page.wait_for_selector("#pair[data-comparison]")
    assert page.locator("#guidelines").inner_text().startswith("Guidelines v1")
    assert page.get_by_text("← 1 Left is better").count() == 1  # shortcuts shown on screen

    seen = []
    for key in ["ArrowLeft", "2", "t"]:
        current = page.get_attribute("#pair", "data-comparison")
        seen.append(int(current))
        page.keyboard.press(key)
        page.wait_for_function(
            "prev => { const p = document.getElementById('pair'); return p && p.dataset.comparison !== prev; }",
            arg=current,
        )
        if page.get_attribute("#pair", "data-comparison"):
            # Focus lands on the new pair once htmx settles it, so the next key press works.
            expect(page.locator("#pair")).to_be_focused(timeout=3000)
    page.wait_for_selector("text=Nothing left to judge")
    assert page.locator("[data-judged]").inner_text() == "3"

    judgments = {j.comparison_id: j for j in Judgment.objects.filter(annotator=annotator)}
    assert sorted(judgments) == sorted(c.pk for c in comparisons)
    assert judgments[seen[0]].chose_left is True
    assert judgments[seen[1]].chose_left is False
    assert judgments[seen[2]].choice == "tie"

    # Nothing in the hostile response ran, and no request left the app.
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert all(url.startswith(live_server.url) for url in requests), requests
    assert not errors, errors


def test_it_toggles_the_guidelines_with_the_question_mark(
    live_server, browser, project: Project, annotator: User
) -> None:
    comparison_make(project.prompts.filter(split="train").first())
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live_server.url}/login/?next=/p/{project.slug}/annotate/")
    page.fill("#id_username", annotator.username)
    page.fill("#id_password", "pw-" + annotator.username)
    page.press("#id_password", "Enter")
    page.wait_for_selector("#pair[data-comparison]")
    page.keyboard.press("?")
    assert "guidelines-hidden" in page.get_attribute("#annotate-layout", "class")
    assert not page.locator("#guidelines").is_visible()
    page.keyboard.press("?")
    assert page.locator("#guidelines").is_visible()
    context.close()


def test_it_shows_new_pairs_without_a_reload(
    live_server, browser, project: Project, annotator: User
) -> None:
    page = browser.new_page()
    page.goto(f"{live_server.url}/login/?next=/p/{project.slug}/annotate/")
    page.fill("#id_username", annotator.username)
    page.fill("#id_password", "pw-" + annotator.username)
    page.press("#id_password", "Enter")
    page.wait_for_selector("text=Nothing left to judge")
    comparison = comparison_make(
        project.prompts.filter(split="train").first()
    )  # the worker's doing
    page.wait_for_selector(f'#pair[data-comparison="{comparison.pk}"]', timeout=15_000)
    page.close()


def test_a_key_pressed_the_moment_a_pair_appears_judges_it_in_place(
    live_server, browser, project: Project, annotator: User
) -> None:
    """A key that lands right after a swap, before any timer, judges the new pair through htmx.

    With htmx's default settle delay the new pair's forms were not yet htmx's for 20 ms: the
    key clicked a plain form, the browser posted it natively and reloaded the page.
    """
    prompts = list(project.prompts.filter(split="train")[:3])
    for i, prompt in enumerate(prompts):
        comparison_make(prompt, texts=(f"Answer A{i}.", f"Answer B{i}."), seed=i)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{live_server.url}/login/?next=/p/{project.slug}/annotate/")
    page.fill("#id_username", annotator.username)
    page.fill("#id_password", "pw-" + annotator.username)
    page.press("#id_password", "Enter")
    page.wait_for_selector("#pair[data-comparison]")
    first = page.get_attribute("#pair", "data-comparison")

    # The next task after the first swap presses "2" on whatever pair is then shown.
    page.evaluate(
        """() => {
          window.notReloaded = true;
          document.addEventListener("htmx:afterSwap", () => setTimeout(() =>
            document.dispatchEvent(new KeyboardEvent("keydown", {key: "2", bubbles: true}))
          ), {once: true});
        }"""
    )
    page.keyboard.press("1")
    expect(page.locator("[data-judged]")).to_have_text("2", timeout=5000)
    assert page.evaluate("window.notReloaded === true")
    second = Judgment.objects.exclude(comparison_id=int(first or 0)).get(annotator=annotator)
    assert second.chose_left is False
    assert Judgment.objects.get(annotator=annotator, comparison_id=int(first or 0)).chose_left
    expect(page.locator("#pair")).to_be_focused(timeout=3000)
