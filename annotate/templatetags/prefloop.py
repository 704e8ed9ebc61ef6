from __future__ import annotations

from django import template
from django.utils.safestring import SafeString

from annotate.rendering import markdown_to_safe_html

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    """Render untrusted markdown as sanitised HTML."""
    return markdown_to_safe_html(text)
