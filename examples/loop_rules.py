"""Example custom rules for `manage.py loop_check --rule examples.loop_rules:<name>`.

A rule is any callable taking (prompt, response_a, response_b) and returning "a", "b" or
"tie". Optional attributes `property_name` and `measure` say what to report per policy.
"""

from __future__ import annotations


def _words(text: str) -> int:
    return len(text.split())


def prefer_fewer_words(prompt: str, response_a: str, response_b: str) -> str:
    """Prefer the response with fewer words; a tie when the counts are within 5 %."""
    a, b = _words(response_a), _words(response_b)
    if abs(a - b) <= 0.05 * max(a, b, 1):
        return "tie"
    return "a" if a < b else "b"


prefer_fewer_words.property_name = "mean words per response"  # type: ignore[attr-defined]
prefer_fewer_words.measure = lambda text: float(_words(text))  # type: ignore[attr-defined]
