"""Judging rules for simulated annotators: which of two responses a rule prefers."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal, cast

from core.text import words

Verdict = Literal["a", "b", "tie"]
VERDICTS: tuple[Verdict, ...] = ("a", "b", "tie")

LENGTH_PROPERTY = "mean length (characters)"


@dataclass(frozen=True)
class JudgeRule:
    name: str
    judge: Callable[[str, str, str], Verdict]  # (prompt_text, response_a, response_b) -> verdict
    property_name: str  # e.g. "mean length (characters)"
    measure: Callable[[str], float]  # property of one response, averaged over a policy's responses
    # The rule in words, as a guideline would say it ("" when it has none): the loop check's
    # round guidance.
    description: str = ""


def response_length(text: str) -> float:
    return float(len(text))


# A markdown bullet ("- ", "* ", "+ ") or numbered item ("1. ", "2) ") starting a line.
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d+[.)])[ \t]+\S", re.MULTILINE)
_NUMBERED_ITEM = re.compile(r"^[ \t]*(?:\*\*)?\d+[.)](?:\*\*)?[ \t]+\S", re.MULTILINE)
# What may follow a closing question mark: quotes, brackets, emphasis, emoji and spaces.
_TRAILING = re.compile(r"[\s\"'\u201d\u2019)\]*_~]+$")
_QUESTION_MARKS = ("?", "\uff1f", "\u061f")  # ASCII, full-width, Arabic
# plain_words: mean word lengths this close (in characters) are a tie.
PLAIN_WORDS_TIE = 0.3


def has_markdown_list(text: str) -> bool:
    return _LIST_ITEM.search(text) is not None


def numbered_steps(text: str) -> bool:
    """A numbered list of at least three items ("1. ...", "2) ...", "**3.** ...")."""
    return len(_NUMBERED_ITEM.findall(text)) >= 3


def ends_with_question(text: str) -> bool:
    """Whether the response ends by asking something: its last character, closing quotes,
    brackets and emphasis aside, is a question mark."""
    return _TRAILING.sub("", text).endswith(_QUESTION_MARKS)


def mean_word_length(text: str) -> float:
    """Characters per word (words of letters and digits); infinite for a text of no words,
    which is never the plainer of two."""
    found = words(text)
    return sum(len(w) for w in found) / len(found) if found else math.inf


def _judge_shorter(prompt: str, a: str, b: str) -> Verdict:
    if len(a) == len(b):
        return "tie"
    return "a" if len(a) < len(b) else "b"


def _judge_longer(prompt: str, a: str, b: str) -> Verdict:
    if len(a) == len(b):
        return "tie"
    return "a" if len(a) > len(b) else "b"


def _judge_plain_words(prompt: str, a: str, b: str) -> Verdict:
    """The lower mean word length wins; within PLAIN_WORDS_TIE characters, a tie."""
    mean_a, mean_b = mean_word_length(a), mean_word_length(b)
    if mean_a == mean_b or abs(mean_a - mean_b) <= PLAIN_WORDS_TIE:
        return "tie"
    return "a" if mean_a < mean_b else "b"


def binary_rule(
    name: str, wanted: Callable[[str], bool], property_name: str, description: str = ""
) -> JudgeRule:
    """A rule on a yes/no property: the response that has it wins; a tie when both or
    neither do. Its measure is the share of responses that have it."""

    def judge(prompt: str, a: str, b: str) -> Verdict:
        has_a, has_b = wanted(a), wanted(b)
        if has_a == has_b:
            return "tie"
        return "a" if has_a else "b"

    return JudgeRule(
        name=name,
        judge=judge,
        property_name=property_name,
        measure=lambda text: 1.0 if wanted(text) else 0.0,
        description=description,
    )


BUILTIN_RULES: dict[str, JudgeRule] = {
    "shorter": JudgeRule(
        name="shorter",
        judge=_judge_shorter,
        property_name=LENGTH_PROPERTY,
        measure=response_length,
        description="Prefer the shorter response.",
    ),
    "longer": JudgeRule(
        name="longer",
        judge=_judge_longer,
        property_name=LENGTH_PROPERTY,
        measure=response_length,
        description="Prefer the longer response.",
    ),
    "no_lists": binary_rule(
        "no_lists",
        lambda text: not has_markdown_list(text),
        "share of responses without a list",
        "Prefer the response without a bulleted or numbered list; a tie when both or neither "
        "have one.",
    ),
    # Rules that leave many pairs tied: most pairs of samples agree on the property.
    "asks_followup": binary_rule(
        "asks_followup",
        ends_with_question,
        "share of responses ending with a question",
        "Prefer the response that ends by asking the user a question; a tie when both or "
        "neither do.",
    ),
    "numbered_steps": binary_rule(
        "numbered_steps",
        numbered_steps,
        "share of responses with 3+ numbered steps",
        "Prefer the response that gives a numbered list of at least three steps; a tie when "
        "both or neither do.",
    ),
    "plain_words": JudgeRule(
        name="plain_words",
        judge=_judge_plain_words,
        property_name="mean word length (characters)",
        # A response of no words counts as 0 in the mean (the judge ranks it last).
        measure=lambda text: m if math.isfinite(m := mean_word_length(text)) else 0.0,
        description="Prefer the response in plainer words: shorter words on average; a tie "
        f"within {PLAIN_WORDS_TIE} characters a word.",
    ),
}

# The panel of `loop_check --panel`: rules of every kind, from every pair differing (shorter)
# to most pairs tied (asks_followup, numbered_steps). The loop must learn each with the same
# defaults.
PANEL = (
    "shorter",
    "no_lists",
    "examples.loop_rules:prefer_fewer_words",
    "asks_followup",
    "numbered_steps",
    "plain_words",
)


def rule_load(spec: str) -> JudgeRule:
    """A builtin rule by name, or ``package.module:function`` as a rule.

    The function takes (prompt_text, response_a, response_b) and returns "a", "b" or
    "tie" (checked on every call). Its ``property_name``/``measure`` attributes, when
    present, say what it measures; otherwise mean length in characters. The first paragraph
    of its docstring is its description. Raises ValueError for an unknown name or an
    unimportable path.
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

    doc = inspect.getdoc(function) or ""
    return JudgeRule(
        name=spec,
        judge=judge,
        property_name=property_name,
        measure=measure,
        description=" ".join(doc.split("\n\n")[0].split()),
    )


def ranks_by_rule(rule: JudgeRule, prompt: str, texts: Sequence[str]) -> list[int]:
    """Ranks (1 the best; level scores share one) of `texts`, in their order, by a rule that
    judges pairs (ranks_from_verdicts). Each pair is judged in the order given."""
    return ranks_from_verdicts(len(texts), lambda i, j: rule.judge(prompt, texts[i], texts[j]))


def rate_by_rule(rule: JudgeRule, prompt: str, text: str, others: Sequence[str]) -> bool:
    """A rating by a rule that judges pairs: `text` is good when it wins against more of
    `others` (other answers to the same prompt, the standard it is held to) than it loses to;
    bad otherwise, and with nothing to hold it to. Each pair is judged with `text` first."""
    verdicts = [rule.judge(prompt, text, other) for other in others]
    return verdicts.count("a") > verdicts.count("b")


def ranks_from_verdicts(count: int, verdict: Callable[[int, int], Verdict | None]) -> list[int]:
    """Ranks (1 the best; level scores share one) of `count` items from a pairwise judge:
    each item's wins minus losses against every other (a Copeland score), so any pairwise
    judge ranks, transitive or not. `verdict(i, j)` (i < j) says "a" for i, "b" for j, "tie",
    or None where it cannot tell (counted as a tie)."""
    score = [0] * count
    for i, j in combinations(range(count), 2):
        said = verdict(i, j)
        if said in ("a", "b"):
            winner, loser = (i, j) if said == "a" else (j, i)
            score[winner] += 1
            score[loser] -= 1
    levels = sorted(set(score), reverse=True)
    return [levels.index(s) + 1 for s in score]
