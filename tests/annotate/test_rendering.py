from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from annotate.models import Comparison, Project, Prompt, Response
from annotate.rendering import RENDERER_VERSION, markdown_to_safe_html
from annotate.services.prompts import PromptInput, prompts_create
from tests.factories import assert_inert, client_make, comparison_make, html_elements


@pytest.mark.parametrize(
    "payload",
    [
        "<script>alert(1)</script>",
        '<a href="#" onclick="alert(1)">x</a>',
        '<button hx-post="/judge" hx-trigger="load">x</button>',
        "[x](javascript:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "![x](https://tracker.example/pixel.png)",
        '<iframe src="https://evil.example"></iframe>',
        '<img src=x onerror="fetch(`/steal`)">',
        "[a](<javascript:alert(1)>) [b](JaVaScRiPt:alert(1))",
    ],
)
def test_it_neutralises_hostile_model_output(payload: str) -> None:
    html = markdown_to_safe_html(payload)
    assert_inert(html)
    assert not any(tag == "img" for tag, _ in html_elements(html))


def test_it_keeps_code_blocks_links_and_marks_the_text_direction() -> None:
    html = markdown_to_safe_html("See [docs](https://example.org)\n\n```\nx = 1 < 2\n```\n\nمرحبا")
    assert 'href="https://example.org"' in html and 'rel="noopener noreferrer nofollow"' in html
    assert "<pre><code>x = 1 &lt; 2" in html
    assert html.startswith('<div class="md" dir="auto">')


def test_it_keeps_the_line_structure_of_model_text() -> None:
    poem = "An old silent pond\nA frog jumps into the pond\nSplash! Silence again."
    html = markdown_to_safe_html(poem + "\n\nBasho\n\n```\ndef f():\n    return 1\n```")
    assert "pond<br>\nA frog" in html and "pond<br>\nSplash" in html
    assert html.count("<p>") == 2  # the blank line still makes a paragraph
    assert "def f():\n    return 1" in html  # code keeps its indentation
    assert "<br>" in markdown_to_safe_html("a\r\nb") and "\r" not in markdown_to_safe_html("a\r\nb")


def test_it_draws_guidelines_typed_with_crlf_line_endings() -> None:
    from annotate.rendering import guideline_to_safe_html

    typed = (
        "Rules\r\n\r\n```example\r\nPrompt: Hi\r\nA: Hello\r\nB: Go away\r\nAnswer: A\r\n```\r\n"
    )
    html = guideline_to_safe_html(typed)
    assert html.count('class="example-pair"') == 1 and "<code" not in html


def test_it_draws_guideline_examples_as_sanitised_worked_pairs() -> None:
    from annotate.rendering import guideline_to_safe_html

    html = guideline_to_safe_html(
        "# Rules\nBe right.\n\n```example\nPrompt: What is 2 + 2?\nA: **4**\n"
        "B: <script>alert(1)</script> five\nAnswer: A\nWhy: B is wrong\nand rude.\n```\n\nEnd."
    )
    assert html.count('class="example-pair"') == 1
    assert "<strong>4</strong>" in html and "Answer: A is better" in html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "B is wrong<br>\nand rude." in html and html.rstrip().endswith("<p>End.</p>\n</div>")


@pytest.mark.django_db
def test_it_stores_each_response_rendered_and_renders_an_outdated_one_again(
    project: Project, annotator: User
) -> None:
    payload = "**bold** <script>alert(1)</script>"
    comparison = comparison_make(project.prompts.first(), (payload, "plain"))  # type: ignore[arg-type]
    response = comparison.response_a
    assert response.html == str(markdown_to_safe_html(payload))
    assert response.html_version == RENDERER_VERSION
    # The pair page shows the stored HTML...
    Response.objects.filter(pk=response.pk).update(html='<div class="md">stored</div>')
    client = client_make(annotator)
    page = client.get(f"/p/{project.slug}/annotate/").content.decode()
    assert "stored" in page
    # ...unless it comes from an older renderer: then the text is rendered now, and the
    # command brings the stored HTML up to date.
    Response.objects.filter(pk=response.pk).update(html_version=RENDERER_VERSION - 1)
    page = client.get(f"/p/{project.slug}/annotate/").content.decode()
    assert "stored" not in page and "<strong>bold</strong>" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    out = StringIO()
    call_command("responses_render", stdout=out)
    response.refresh_from_db()
    assert (response.html, response.html_version) == (
        str(markdown_to_safe_html(payload)),
        RENDERER_VERSION,
    )
    assert "1 responses rendered" in out.getvalue()


@pytest.mark.django_db
def test_a_multi_turn_prompt_shows_as_a_stored_transcript_rendered_again_when_outdated(
    project: Project, annotator: User
) -> None:
    (prompt,) = prompts_create(
        project=project,
        rows=[
            PromptInput(
                messages=[
                    {"role": "system", "content": "Answer *briefly*."},
                    {"role": "user", "content": "Hi <img src=x onerror=alert(1)>"},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "And **now**?"},
                ]
            )
        ],
    )
    assert prompt.html_version == RENDERER_VERSION
    turns = [attrs["class"] for tag, attrs in html_elements(prompt.html) if tag == "div"]
    assert turns[::2] == [
        "chat-turn system",
        "chat-turn user",
        "chat-turn assistant",
        "chat-turn user",
    ]
    assert "<em>briefly</em>" in prompt.html and "<strong>now</strong>" in prompt.html
    assert_inert(prompt.html)
    Comparison.objects.filter(project=project).delete()
    comparison_make(prompt, ("One.", "Two."))
    client = client_make(annotator)
    Prompt.objects.filter(pk=prompt.pk).update(html='<div class="chat-turn user">stored</div>')
    page = client.get(f"/p/{project.slug}/annotate/").content.decode()
    assert "stored" in page
    Prompt.objects.filter(pk=prompt.pk).update(html_version=RENDERER_VERSION - 1)
    page = client.get(f"/p/{project.slug}/annotate/").content.decode()
    assert "stored" not in page and page.count('class="chat-turn ') == 4
    assert "<strong>now</strong>" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<img" not in page
    out = StringIO()
    call_command("responses_render", stdout=out)
    prompt.refresh_from_db()
    assert prompt.html_version == RENDERER_VERSION and "<strong>now</strong>" in prompt.html
    assert "1 prompts rendered" in out.getvalue()
