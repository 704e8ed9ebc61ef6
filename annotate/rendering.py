"""Untrusted text (model output, imported prompts) to safe HTML.

Markdown is rendered with raw HTML disabled, then sanitised with an allowlist: no scripts,
no event handlers, no `hx-*` attributes, no images (remote images leak who is reading), and
only http(s)/mailto links, opened without referrer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import nh3
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

# "breaks": a single newline is a line break, as people and models mean it (a poem, an address,
# a list of names written one per line): CommonMark's soft break would join the lines.
_markdown = MarkdownIt(
    "commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True}
).enable(["table", "strikethrough"])


def newlines_normalised(text: str) -> str:
    """Text typed in a browser (CRLF) or pasted from old files (CR) with plain newlines."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "a",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"align"},
    "td": {"align"},
    "code": {"class"},
}
ALLOWED_SCHEMES = {"http", "https", "mailto"}


# The same responses are rendered again and again (every refresh, every annotator of a pair).
@functools.lru_cache(maxsize=4096)
def markdown_to_safe_html(text: str) -> SafeString:
    html = _markdown.render(newlines_normalised(text or ""))
    cleaned = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=ALLOWED_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )
    return mark_safe(f'<div class="md" dir="auto">{cleaned}</div>')


# Bump when the rendering or the allowlist changes: stored HTML of an older version is then
# rendered again on display (and `manage.py responses_render` refreshes it in the database,
# responses and prompts).
RENDERER_VERSION = 2  # 2: single newlines kept as line breaks


class RenderedText(Protocol):
    text: str
    html: str
    html_version: int


class RenderedPrompt(Protocol):
    messages: Any
    html: str
    html_version: int


def stored_html(text: str) -> tuple[str, int]:
    """What to store beside a text: its sanitised HTML and the renderer version."""
    return str(markdown_to_safe_html(text)), RENDERER_VERSION


def _stored_current(item: RenderedText | RenderedPrompt) -> bool:
    """Whether the HTML stored with an item is there and from the current renderer."""
    return item.html_version == RENDERER_VERSION and bool(item.html)


def rendered_html(item: RenderedText) -> SafeString:
    """An item's stored HTML while it is current, else the text rendered now."""
    if _stored_current(item):
        return mark_safe(item.html)  # stored from markdown_to_safe_html
    return markdown_to_safe_html(item.text)


def transcript_to_safe_html(messages: Sequence[Mapping[str, Any]]) -> SafeString:
    """A prompt's chat messages as turns, each labelled with its role, content sanitised."""
    return mark_safe(
        "".join(
            format_html(
                '<div class="chat-turn {}"><span class="role">{}</span>{}</div>',
                message.get("role", ""),
                message.get("role", ""),
                markdown_to_safe_html(str(message.get("content", ""))),
            )
            for message in messages
        )
    )


def stored_transcript(messages: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    """What to store beside a prompt: its transcript's sanitised HTML and the renderer version."""
    return str(transcript_to_safe_html(messages)), RENDERER_VERSION


def rendered_transcript(prompt: RenderedPrompt) -> SafeString:
    """A prompt's stored transcript HTML while it is current, else rendered now."""
    if _stored_current(prompt):
        return mark_safe(prompt.html)  # stored from transcript_to_safe_html
    return transcript_to_safe_html(prompt.messages)


# Guidelines may embed worked examples as fenced blocks:
#   ```example
#   Prompt: What is 2 + 2?
#   A: 4.
#   B: Five, I think.
#   Answer: A
#   Why: B is wrong.
#   ```
_EXAMPLE_BLOCK = re.compile(r"^```example[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_EXAMPLE_KEY = re.compile(r"^(prompt|a|b|answer|why):\s?(.*)$", re.IGNORECASE)
_ANSWERS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both bad": "Both bad"}


def _example_fields(body: str) -> dict[str, str]:
    fields: dict[str, list[str]] = {}
    current = None
    for line in body.splitlines():
        match = _EXAMPLE_KEY.match(line)
        if match:
            current = match.group(1).lower()
            fields[current] = [match.group(2)]
        elif current is not None:
            fields[current].append(line)
    return {key: "\n".join(lines).strip() for key, lines in fields.items()}


def _example_html(body: str) -> str:
    fields = _example_fields(body)
    answer = fields.get("answer", "").strip().lower()
    parts = [
        '<div class="example-pair"><p><strong>Example</strong></p>',
        format_html("<p>Prompt:</p>{}", markdown_to_safe_html(fields.get("prompt", ""))),
        format_html("<p>A:</p>{}", markdown_to_safe_html(fields.get("a", ""))),
        format_html("<p>B:</p>{}", markdown_to_safe_html(fields.get("b", ""))),
        format_html(
            '<p class="example-answer">Answer: {}</p>', _ANSWERS.get(answer, answer or "—")
        ),
    ]
    if fields.get("why"):
        parts.append(format_html("<p>Why:</p>{}", markdown_to_safe_html(fields["why"])))
    return "".join(parts) + "</div>"


def guideline_to_safe_html(text: str) -> SafeString:
    """Guidelines as sanitised HTML, with their ```example blocks drawn as worked pairs."""
    text = newlines_normalised(text or "")
    out: list[str] = []
    position = 0
    for match in _EXAMPLE_BLOCK.finditer(text):
        out.append(markdown_to_safe_html(text[position : match.start()]))
        out.append(_example_html(match.group(1)))
        position = match.end()
    out.append(markdown_to_safe_html(text[position:]))
    return mark_safe("".join(out))  # every part is sanitised or built by format_html
