"""What a policy's responses drift toward, round after round: length, refusals, repetition.

Plain text measures, no model: a verbosity or degeneration drift shows in the first rounds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from core.text import CUT_OFF, words

# Openings and phrases of a refusal, in English (most of what small chat models say).
_REFUSAL = re.compile(
    r"\b(I can(?:no|')t (?:help|assist|do|provide|comply)|I'?m (?:sorry|unable|not able)|"
    r"I am (?:sorry|unable|not able)|I (?:won't|will not) (?:help|provide|do)|"
    r"as an AI(?: language model)?)\b",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """A refusal within the response's first 300 characters."""
    return _REFUSAL.search(text[:300]) is not None


def repetition(text: str, n: int = 3) -> float:
    """The share of the response's word n-grams that repeat an earlier one (0: none)."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class Drift:
    responses: int
    mean_chars: float
    refusal_rate: float
    repetition: float  # mean over the responses
    truncated_rate: float  # stopped by the token limit


def drift_of(texts: Sequence[str], finish_reasons: Sequence[str]) -> Drift | None:
    if not texts:
        return None
    n = len(texts)
    return Drift(
        responses=n,
        mean_chars=sum(len(t) for t in texts) / n,
        refusal_rate=sum(map(is_refusal, texts)) / n,
        repetition=sum(map(repetition, texts)) / n,
        truncated_rate=sum(1 for r in finish_reasons if r == CUT_OFF) / n,
    )
