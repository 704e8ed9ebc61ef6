"""Ratings: one response rated on its own, good or bad, or on a 1-5 scale that is good from the
project's threshold up (annotate.models, "Ratings")."""

from __future__ import annotations

from typing import Any

from annotate.models import (
    SCORE_MAX,
    SCORE_MIN,
    Choice,
    Comparison,
    Project,
    Purpose,
    RatingScale,
    Response,
)
from core.errors import ValidationFailed


def rating_create(
    *,
    response: Response,
    round_number: int,
    purpose: str = Purpose.TRAIN,
    pairing_strategy: str = "",
    gold_choice: str = "",
    selection: dict[str, Any] | None = None,
) -> Comparison:
    """A rating of `response`: a queue item like a pair, with no second response."""
    if gold_choice and gold_choice not in (Choice.GOOD, Choice.BAD):
        raise ValidationFailed("A rating's gold answer is good or bad.")
    prompt = response.prompt
    return Comparison.objects.create(
        project_id=prompt.project_id,
        prompt=prompt,
        response_a=response,
        response_b=None,
        left_is_a=True,  # one response: no sides
        round_number=round_number,
        purpose=purpose,
        pairing_strategy=pairing_strategy,
        gold_choice=gold_choice,
        selection=selection or {},
    )


class RatingInvalid(ValidationFailed):
    """A rating that does not fit the project's scale."""


def rating_read(*, project: Project, choice: str, score: int | None) -> tuple[Choice, int | None]:
    """A rating's label and score on the project's scale: good / bad as given, or a score from
    1 to 5 that is good from the project's threshold up."""
    if project.rating_scale == RatingScale.FIVE:
        if choice or score is None:
            raise RatingInvalid(
                f"Rate this response with a score from {SCORE_MIN} to {SCORE_MAX} "
                f"(good from {project.rating_threshold} up)."
            )
        if isinstance(score, bool) or not SCORE_MIN <= score <= SCORE_MAX:
            raise RatingInvalid(f"A score is a whole number from {SCORE_MIN} to {SCORE_MAX}.")
        return (Choice.GOOD if score >= project.rating_threshold else Choice.BAD), score
    if score is not None:
        raise RatingInvalid("This project rates good or bad, not with a score.")
    if choice not in (Choice.GOOD, Choice.BAD):
        raise RatingInvalid("Rate this response good or bad.")
    return Choice(choice), None
