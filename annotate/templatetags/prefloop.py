from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from annotate.rendering import (
    RenderedPrompt,
    RenderedText,
    guideline_to_safe_html,
    markdown_to_safe_html,
    rendered_html,
    rendered_transcript,
)

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """Render untrusted markdown as sanitised HTML."""
    return markdown_to_safe_html(text)


@register.filter(name="guidelines")
def guidelines_filter(text: str) -> SafeString:
    """Render guidelines, with their embedded worked examples, as sanitised HTML."""
    return guideline_to_safe_html(text)


@register.filter(name="rendered")
def rendered_filter(item: RenderedText) -> SafeString:
    """A response as sanitised HTML: the HTML stored with it, or rendered now if outdated."""
    return rendered_html(item)


@register.filter(name="transcript")
def transcript_filter(prompt: RenderedPrompt) -> SafeString:
    """A prompt's chat turns as sanitised HTML: stored with it, or rendered now if outdated."""
    return rendered_transcript(prompt)
