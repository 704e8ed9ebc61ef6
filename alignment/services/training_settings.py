"""The hyperparameters a lead sets for a training run: the engine's spec (methods, losses,
presets, defaults and bounds) with the web side's error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignment.engine.spec import (
    TRAINING_FIELDS,
    TRAINING_PRESETS,
    Hyperparameters,
    hyperparameters_problem,
)
from core.errors import ValidationFailed


@dataclass(frozen=True, kw_only=True)
class TrainingSettings(Hyperparameters):
    """The hyperparameters a lead sets for a run (alignment.engine.spec: the engine's
    defaults and bounds); invalid ones raise ValidationFailed naming the field."""

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TrainingSettings:
        unknown = set(data) - set(TRAINING_FIELDS)
        if unknown:
            raise ValidationFailed(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        try:
            values = {name: TRAINING_FIELDS[name].parse(value) for name, value in data.items()}
        except ValueError as error:
            raise ValidationFailed(str(error)) from None
        return cls(**values).validate()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainingSettings:
        """A preset's settings (TRAINING_PRESETS), with any of them overridden."""
        if name not in TRAINING_PRESETS:
            raise ValidationFailed(
                f"Unknown preset {name!r}; expected one of {', '.join(TRAINING_PRESETS)}."
            )
        return cls.from_mapping({**TRAINING_PRESETS[name][1], **overrides})

    def validate(self) -> TrainingSettings:
        problem = hyperparameters_problem(self)
        if problem is not None:
            raise ValidationFailed(problem)
        return self
