"""The hyperparameters a lead sets for a training run: methods, losses, presets, bounds."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from alignment.engine.training import TrainingConfig
from core.errors import ValidationFailed

METHODS = {
    "dpo": "DPO (and its sibling losses)",
    "kto": "KTO (unpaired: uses ties and both-bad too)",
    "orpo": "ORPO (no reference model)",
    "simpo": "SimPO (no reference model)",
}
LOSS_TYPES = {
    "sigmoid": "DPO (sigmoid)",
    "ipo": "IPO",
    "hinge": "Hinge (SLiC)",
    "robust": "Robust DPO (noisy labels)",
}

# Starting points a lead picks from; every value stays editable. LoRA learning rates (the
# adapter, not the full model, is trained). Sources: the DPO, IPO, robust DPO (Chowdhury et
# al. 2024), RPO (DPO + SFT), KTO, ORPO and SimPO papers and TRL's documented defaults.
TRAINING_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpo": ("DPO", {"method": "dpo", "loss_type": "sigmoid", "beta": 0.1}),
    "ipo": ("IPO", {"method": "dpo", "loss_type": "ipo", "beta": 0.1}),
    "robust_dpo": (
        "Robust DPO, for noisy labels (10 % flipped)",
        {"method": "dpo", "loss_type": "robust", "beta": 0.1, "label_smoothing": 0.1},
    ),
    "hinge": ("Hinge (SLiC)", {"method": "dpo", "loss_type": "hinge", "beta": 0.1}),
    "dpo_sft": (
        "DPO + SFT term (keeps the chosen responses likely)",
        {"method": "dpo", "loss_type": "sigmoid", "beta": 0.1, "sft_weight": 1.0},
    ),
    "kto": (
        "KTO (ties and both-bad as unpaired examples)",
        {"method": "kto", "beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0},
    ),
    "orpo": ("ORPO (no reference model)", {"method": "orpo", "beta": 0.1}),
    "simpo": (
        "SimPO (no reference model)",
        {"method": "simpo", "beta": 2.0, "simpo_gamma": 0.5},
    ),
}


# The defaults live once, in the engine; the lead's settings add the page's bounds on top.
_ENGINE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TrainingConfig)}


@dataclass(frozen=True)
class TrainingSettings:
    """The hyperparameters a lead sets for a run (engine defaults), with the page's bounds."""

    method: str = _ENGINE_DEFAULTS["method"]
    loss_type: str = _ENGINE_DEFAULTS["loss_type"]
    beta: float = _ENGINE_DEFAULTS["beta"]
    sft_weight: float = _ENGINE_DEFAULTS["sft_weight"]
    label_smoothing: float = _ENGINE_DEFAULTS["label_smoothing"]
    simpo_gamma: float = _ENGINE_DEFAULTS["simpo_gamma"]
    desirable_weight: float = _ENGINE_DEFAULTS["desirable_weight"]
    undesirable_weight: float = _ENGINE_DEFAULTS["undesirable_weight"]
    learning_rate: float = _ENGINE_DEFAULTS["learning_rate"]
    epochs: int = _ENGINE_DEFAULTS["epochs"]
    batch_size: int = _ENGINE_DEFAULTS["batch_size"]
    gradient_accumulation_steps: int = _ENGINE_DEFAULTS["gradient_accumulation_steps"]
    lora_r: int = _ENGINE_DEFAULTS["lora_r"]
    lora_alpha: int = _ENGINE_DEFAULTS["lora_alpha"]
    lora_dropout: float = _ENGINE_DEFAULTS["lora_dropout"]
    max_length: int = _ENGINE_DEFAULTS["max_length"]
    seed: int = _ENGINE_DEFAULTS["seed"]

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> TrainingSettings:
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValidationFailed(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        values: dict[str, Any] = {}
        defaults = cls()
        for name, value in data.items():
            kind = type(getattr(defaults, name))
            try:
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise ValidationFailed(
                    f"{name} must be a {kind.__name__}, got {value!r}."
                ) from None
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
        checks = [
            (self.method in METHODS, f"method must be one of {', '.join(METHODS)}."),
            (self.loss_type in LOSS_TYPES, f"loss_type must be one of {', '.join(LOSS_TYPES)}."),
            (0 <= self.sft_weight <= 10, "sft_weight must be between 0 and 10."),
            (0 <= self.label_smoothing < 0.5, "label_smoothing must be at least 0 and below 0.5."),
            (0 <= self.simpo_gamma <= 10, "simpo_gamma must be between 0 and 10."),
            (0 < self.desirable_weight <= 10, "desirable_weight must be above 0 and at most 10."),
            (
                0 < self.undesirable_weight <= 10,
                "undesirable_weight must be above 0 and at most 10.",
            ),
            (
                self.method != "kto" or self.batch_size >= 2,
                "batch_size must be at least 2 for KTO (its KL estimate pairs the rows of a batch).",
            ),
            (0 < self.beta <= 10, "beta must be above 0 and at most 10."),
            (0 < self.learning_rate < 1, "learning_rate must be between 0 and 1."),
            (1 <= self.epochs <= 50, "epochs must be between 1 and 50."),
            (1 <= self.batch_size <= 256, "batch_size must be between 1 and 256."),
            (
                1 <= self.gradient_accumulation_steps <= 256,
                "gradient_accumulation_steps must be between 1 and 256.",
            ),
            (1 <= self.lora_r <= 512, "lora_r must be between 1 and 512."),
            (1 <= self.lora_alpha <= 4096, "lora_alpha must be between 1 and 4096."),
            (0 <= self.lora_dropout < 1, "lora_dropout must be at least 0 and below 1."),
            (32 <= self.max_length <= 32768, "max_length must be between 32 and 32768."),
        ]
        for ok, message in checks:
            if not ok:
                raise ValidationFailed(message)
        return self
