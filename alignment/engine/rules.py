"""Judging rules for simulated annotators: which of two responses a rule prefers."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

Verdict = Literal["a", "b", "tie"]
VERDICTS: tuple[Verdict, ...] = ("a", "b", "tie")

LENGTH_PROPERTY = "mean length (characters)"
LIST_PROPERTY = "share of responses with a list"


@dataclass(frozen=True)
class JudgeRule:
    name: str
    judge: Callable[[str, str, str], Verdict]  # (prompt_text, response_a, response_b) -> verdict
    property_name: str  # e.g. "mean length (characters)"
    measure: Callable[[str], float]  # property of one response, averaged over a policy's responses


def response_length(text: str) -> float:
    return float(len(text))


# A markdown bullet ("- ", "* ", "+ ") or numbered item ("1. ", "2) ") starting a line.
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+\S", re.MULTILINE)


def has_markdown_list(text: str) -> bool:
    return _LIST_ITEM.search(text) is not None


def _judge_shorter(prompt: str, a: str, b: str) -> Verdict:
    if len(a) == len(b):
        return "tie"
    return "a" if len(a) < len(b) else "b"


def _judge_longer(prompt: str, a: str, b: str) -> Verdict:
    if len(a) == len(b):
        return "tie"
    return "a" if len(a) > len(b) else "b"


def _judge_no_lists(prompt: str, a: str, b: str) -> Verdict:
    a_list, b_list = has_markdown_list(a), has_markdown_list(b)
    if a_list == b_list:
        return "tie"
    return "b" if a_list else "a"


BUILTIN_RULES: dict[str, JudgeRule] = {
    "shorter": JudgeRule(
        name="shorter",
        judge=_judge_shorter,
        property_name=LENGTH_PROPERTY,
        measure=response_length,
    ),
    "longer": JudgeRule(
        name="longer",
        judge=_judge_longer,
        property_name=LENGTH_PROPERTY,
        measure=response_length,
    ),
    "no_lists": JudgeRule(
        name="no_lists",
        judge=_judge_no_lists,
        property_name=LIST_PROPERTY,
        measure=lambda text: 1.0 if has_markdown_list(text) else 0.0,
    ),
}


def rule_load(spec: str) -> JudgeRule:
    """A builtin rule by name, or ``package.module:function`` as a rule.

    The function takes (prompt_text, response_a, response_b) and returns "a", "b" or
    "tie" (checked on every call). Its ``property_name``/``measure`` attributes, when
    present, say what it measures; otherwise mean length in characters. Raises
    ValueError for an unknown name or an unimportable path.
    """
    builtin = BUILTIN_RULES.get(spec)
    if builtin is not None:
        return builtin
    known = ", ".join(sorted(BUILTIN_RULES))
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(
            f"unknown judge rule {spec!r}: use a builtin ({known}) or 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"judge rule {spec!r}: cannot import {module_name!r} ({error}); builtins: {known}"
        ) from error
    function: object = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
        if function is None:
            raise ValueError(
                f"judge rule {spec!r}: {module_name!r} has no {attribute!r}; builtins: {known}"
            )
    if isinstance(function, JudgeRule):
        return function
    if not callable(function):
        raise ValueError(f"judge rule {spec!r} is not callable")
    raw = cast(Callable[[str, str, str], object], function)
    measure = getattr(function, "measure", response_length)
    property_name = getattr(function, "property_name", LENGTH_PROPERTY)
    if not callable(measure) or not isinstance(property_name, str):
        raise ValueError(
            f"judge rule {spec!r}: 'measure' must be callable and 'property_name' a string"
        )

    def judge(prompt: str, a: str, b: str) -> Verdict:
        verdict = raw(prompt, a, b)
        if verdict not in VERDICTS:
            raise ValueError(
                f"judge rule {spec!r} returned {verdict!r}; expected one of 'a', 'b', 'tie'"
            )
        return verdict

    return JudgeRule(name=spec, judge=judge, property_name=property_name, measure=measure)
