from __future__ import annotations

from html.parser import HTMLParser

import pytest

from annotate.rendering import markdown_to_safe_html


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))


def elements(html: str) -> list[tuple[str, dict[str, str]]]:
    parser = _Elements()
    parser.feed(html)
    return parser.elements


def assert_inert(html: str) -> None:
    for tag, attrs in elements(html):
        assert tag not in {
            "script",
            "iframe",
            "img",
            "object",
            "embed",
            "style",
            "form",
            "button",
            "input",
        }
        for name, value in attrs.items():
            assert not name.startswith(("on", "hx-", "data-")), name
            if name in {"href", "src"}:
                assert value.startswith(("http://", "https://", "mailto:")), value


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
    assert not any(tag == "img" for tag, _ in elements(html))


def test_it_keeps_code_blocks_links_and_marks_the_text_direction() -> None:
    html = markdown_to_safe_html("See [docs](https://example.org)\n\n```\nx = 1 < 2\n```\n\nمرحبا")
    assert 'href="https://example.org"' in html and 'rel="noopener noreferrer nofollow"' in html
    assert "<pre><code>x = 1 &lt; 2" in html
    assert html.startswith('<div class="md" dir="auto">')


def test_it_draws_guideline_examples_as_sanitised_worked_pairs() -> None:
    from annotate.rendering import guideline_to_safe_html

    html = guideline_to_safe_html(
        "# Rules\nBe right.\n\n```example\nPrompt: What is 2 + 2?\nA: **4**\n"
        "B: <script>alert(1)</script> five\nAnswer: A\nWhy: B is wrong\nand rude.\n```\n\nEnd."
    )
    assert html.count('class="example-pair"') == 1
    assert "<strong>4</strong>" in html and "Answer: A is better" in html
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "B is wrong\nand rude." in html and html.rstrip().endswith("<p>End.</p>\n</div>")
