from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from annotate.models import Comparison, Judgment, Project
from annotate.rendering import markdown_to_safe_html
from tests.factories import assert_inert, client_make, comparison_make

pytestmark = pytest.mark.django_db

HOSTILE = (
    "<script>window.pwned=1</script>\n\n<img src=x onerror=alert(1)>\n\n"
    '<div hx-get="/admin/" hx-trigger="load">x</div>\n\n[click](javascript:alert(1)) '
    "![track](http://evil.example/p.png)\n\n```python\nprint('kept')\n```"
)


@pytest.fixture
def comparison(project: Project) -> Comparison:
    return comparison_make(
        project.prompts.filter(split="train").first(), texts=(HOSTILE, "A plain answer.")
    )


def test_it_sends_anonymous_users_to_login(project: Project) -> None:
    response = Client().get(reverse("annotate", args=[project.slug]))
    assert response.status_code == 302 and reverse("login") in response["Location"]


def test_it_hides_other_projects_behind_a_404(project: Project, outsider: User) -> None:
    client = client_make(outsider)
    assert client.get(reverse("annotate", args=[project.slug])).status_code == 404
    assert client.get(reverse("project_overview", args=[project.slug])).status_code == 404
    assert project.name not in client.get(reverse("home")).content.decode()


def test_it_shows_the_pair_sanitised_with_guidelines_and_shortcuts(
    comparison: Comparison, annotator: User
) -> None:
    page = (
        client_make(annotator)
        .get(reverse("annotate", args=[comparison.project.slug]))
        .content.decode()
    )
    assert "A plain answer." in page
    assert "Prefer <strong>correct</strong> answers." in page  # guidelines rendered beside the pair
    rendered = markdown_to_safe_html(HOSTILE)
    assert rendered in page  # the hostile text reaches the page only in its sanitised form
    assert_inert(rendered)
    assert "<script>window.pwned" not in page and "evil.example" not in page
    assert "<pre><code class=\"language-python\">print('kept')" in rendered
    assert 'data-shortcut="ArrowLeft 1"' in page and "<kbd>?</kbd>" in page


def test_it_records_a_judgment_and_swaps_in_the_next_pair(
    project: Project, annotator: User
) -> None:
    prompts = list(project.prompts.filter(split="train")[:2])
    first, second = (comparison_make(p, seed=i) for i, p in enumerate(prompts))
    client = client_make(annotator)
    client.get(reverse("annotate", args=[project.slug]))
    held = first if first.leases.filter(annotator=annotator).exists() else second
    shown_at = int(time.time() * 1000) - 4000  # the pair was on screen for four seconds
    response = client.post(
        reverse("judge", args=[project.slug, held.pk]),
        {"choice": "left", "idempotency_key": "abc", "shown_at": str(shown_at)},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert "<html" not in body and 'id="pair"' in body  # only the fragment
    other = second if held == first else first
    assert f'data-comparison="{other.pk}"' in body
    judgment = Judgment.objects.get()
    assert (
        judgment.comparison == held
        and judgment.chose_left is True
        and 4000 <= judgment.time_spent_ms < 60_000
    )


def test_it_says_when_nothing_is_left(project: Project, annotator: User) -> None:
    page = client_make(annotator).get(reverse("annotate", args=[project.slug])).content.decode()
    assert "Nothing left to judge" in page


def test_it_shows_a_clear_error_for_a_bad_choice_and_writes_nothing(
    comparison: Comparison, annotator: User
) -> None:
    response = client_make(annotator).post(
        reverse("judge", args=[comparison.project.slug, comparison.pk]),
        {"choice": "sideways"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 422
    assert "Unknown choice" in response.content.decode()
    assert not Judgment.objects.exists()


def test_it_returns_the_first_result_for_a_double_submit(
    comparison: Comparison, annotator: User
) -> None:
    client = client_make(annotator)
    url = reverse("judge", args=[comparison.project.slug, comparison.pk])
    for _ in range(2):
        response = client.post(
            url, {"choice": "right", "idempotency_key": "same"}, HTTP_HX_REQUEST="true"
        )
        assert response.status_code == 200
    assert Judgment.objects.count() == 1


def test_it_skips_and_moves_on(comparison: Comparison, annotator: User) -> None:
    client = client_make(annotator)
    response = client.post(
        reverse("skip", args=[comparison.project.slug, comparison.pk]),
        {"reason": "unsure"},
        HTTP_HX_REQUEST="true",
    )
    assert "Nothing left to judge" in response.content.decode()
    assert comparison.leases.get(annotator=annotator).state == "skipped"


def test_it_shows_the_lead_an_overview_and_sends_annotators_to_work(
    comparison: Comparison, lead: User, annotator: User
) -> None:
    url = reverse("project_overview", args=[comparison.project.slug])
    page = client_make(lead).get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert 'data-stat="prompts">9<' in body and 'data-stat="comparisons">1<' in body
    response = client_make(annotator).get(url)
    assert response.status_code == 302 and response["Location"].endswith("/annotate/")


def test_it_sets_a_content_security_policy(project: Project, annotator: User) -> None:
    response = client_make(annotator).get(reverse("annotate", args=[project.slug]))
    policy = response["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "object-src 'none'" in policy


def test_it_ignores_an_implausible_timestamp(comparison: Comparison, annotator: User) -> None:
    response = client_make(annotator).post(
        reverse("judge", args=[comparison.project.slug, comparison.pk]),
        {"choice": "left", "shown_at": "0"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    assert Judgment.objects.get().time_spent_ms is None
