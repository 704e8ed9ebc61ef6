"""The training and sampling settings, once: each field's type, default, bounds, label, help
and the methods it applies to.

`Hyperparameters` and `SamplingParameters` are the definitions; `TrainingConfig`, the web
side's `TrainingSettings` and `SamplingSettings`, the lead's form, the API's serializers and
the loop check's options are all derived from them (`TRAINING_FIELDS`, `SAMPLING_FIELDS`).
Bounds follow what the library accepts (TRL: label_smoothing in [0, 0.5), KTO's weights
above 0); a bound's message names the field.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Training methods. dpo: TRL's DPOTrainer with `loss_type` and an optional SFT term on the
# chosen responses (`sft_weight`); kto: KTOTrainer on unpaired rows (ties and both-bad
# included); orpo and simpo need no reference model (ORPO and CPO with loss "simpo").
METHODS: dict[str, str] = {
    "dpo": "DPO (and its sibling losses)",
    "kto": "KTO (unpaired: uses ties and both-bad too)",
    "orpo": "ORPO (no reference model)",
    "simpo": "SimPO (no reference model)",
}

# TRL 1.16 DPOConfig.loss_type values for paired data.
LOSS_TYPES: dict[str, str] = {
    "sigmoid": "DPO (sigmoid)",
    "hinge": "Hinge (SLiC)",
    "ipo": "IPO",
    "exo_pair": "EXO (pairwise)",
    "nca_pair": "NCA (pairwise)",
    "robust": "Robust DPO (noisy labels)",
    "bco_pair": "BCO (pairwise)",
    "sppo_hard": "SPPO (hard labels)",
    "aot": "AOT (paired)",
    "aot_unpaired": "AOT (unpaired)",
    "apo_zero": "APO-zero",
    "apo_down": "APO-down",
    "discopop": "DiscoPOP",
    "sft": "SFT only (no preference term)",
    "sigmoid_norm": "DPO, length-normalised",
}

# The Trainer's `optim` values offered: AdamW (its default, fused), and bitsandbytes' paged 8-bit AdamW (CUDA).
OPTIMIZERS: dict[str, str] = {
    "adamw_torch_fused": "AdamW",
    "paged_adamw_8bit": "Paged AdamW, 8-bit (GPU)",
}
GPU_OPTIMIZERS = ("paged_adamw_8bit",)

# The losses TRL applies label_smoothing in; exo_pair needs it above 0.
LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")

# numpy's seed takes below 2**32; the API's integers are 31-bit.
SEED_MAX = 2**31 - 1

_ALL_METHODS = tuple(METHODS)


@dataclass(frozen=True)
class FieldSpec:
    """One setting: its name, type (int, float or str), default, label, help, bounds (each
    end included or not; None: unbounded), choices (str fields) and the methods it acts in."""

    name: str
    kind: type
    default: Any
    label: str
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    choices: Mapping[str, str] | None = None
    methods: tuple[str, ...] = _ALL_METHODS

    def range_text(self) -> str:
        """The bounds in words: "between 1 and 50", "above 0 and at most 10", ..."""
        low = None if self.low is None else _number(self.low)
        high = None if self.high is None else _number(self.high)
        if low is not None and high is not None and self.low_inclusive and self.high_inclusive:
            return f"between {low} and {high}"
        parts = []
        if low is not None:
            parts.append(f"at least {low}" if self.low_inclusive else f"above {low}")
        if high is not None:
            parts.append(f"at most {high}" if self.high_inclusive else f"below {high}")
        return " and ".join(parts)

    def help_text(self) -> str:
        """The help a person reads: the methods it acts in, what it does, its bounds."""
        parts = []
        if self.methods != _ALL_METHODS:
            # A method's name is the first word of its label: DPO, KTO, ORPO, SimPO.
            names = (METHODS[m].split()[0] for m in self.methods)
            parts.append(" and ".join(names) + " only.")
        if self.help:
            parts.append(self.help)
        if self.low is not None or self.high is not None:
            text = self.range_text()
            parts.append(text[0].upper() + text[1:] + ".")
        return " ".join(parts)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not a valid setting (a sentence naming the field), or None."""
        if self.choices is not None:
            if isinstance(value, str) and value in self.choices:
                return None
            return f"{self.name} must be one of {', '.join(self.choices)}."
        if self.kind is str:
            return None if isinstance(value, str) else f"{self.name} must be a str, got {value!r}."
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{self.name} must be a {self.kind.__name__}, got {value!r}."
        if self.kind is int and not isinstance(value, int):
            return f"{self.name} must be a whole number, got {value!r}."
        above = self.low is None or (value >= self.low if self.low_inclusive else value > self.low)
        below = self.high is None or (
            value <= self.high if self.high_inclusive else value < self.high
        )
        if not (math.isfinite(value) and above and below):
            return f"{self.name} must be {self.range_text()}."
        return None

    def parse(self, value: Any) -> Any:
        """``value`` (a number, or text from a form, a command line or JSON) as this field's
        type; ValueError names the field. Bounds are not checked here (see `problem`)."""
        error = ValueError(f"{self.name} must be a {self.kind.__name__}, got {value!r}.")
        if isinstance(value, bool):
            raise error
        if self.kind is str:
            if not isinstance(value, str):
                raise error
            return value
        if isinstance(value, str):
            value = value.strip()
        try:
            number = float(value) if self.kind is float else _whole(value)
        except (TypeError, ValueError, OverflowError):
            raise error from None
        return number


def _whole(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value)
    raise ValueError(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def setting(
    default: Any,
    *,
    label: str,
    help: str = "",
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    choices: Mapping[str, str] | None = None,
    methods: tuple[str, ...] = _ALL_METHODS,
) -> Any:
    """A dataclass field with its default and what `field_specs` reads back."""
    described = {
        "label": label,
        "help": help,
        "low": low,
        "high": high,
        "low_inclusive": low_inclusive,
        "high_inclusive": high_inclusive,
        "choices": choices,
        "methods": methods,
    }
    return dataclasses.field(default=default, metadata={"setting": described})


def field_specs(cls: type) -> dict[str, FieldSpec]:
    """The FieldSpecs of a dataclass declared with `setting`, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: FieldSpec(
            name=f.name, kind=hints[f.name], default=f.default, **f.metadata["setting"]
        )
        for f in dataclasses.fields(cls)
        if "setting" in f.metadata
    }


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """What a lead sets for a training run. The engine's TrainingConfig adds the model, the
    directories and the adapters to them."""

    method: str = setting("dpo", label="Method", choices=METHODS)
    loss_type: str = setting(
        "sigmoid",
        label="DPO loss",
        choices=LOSS_TYPES,
        methods=("dpo",),
        help="TRL's loss_type: sigmoid is DPO's own; robust with label smoothing for noisy labels.",
    )
    beta: float = setting(
        0.1,
        label="Beta",
        low=0,
        low_inclusive=False,
        high=10,
        help="DPO, KTO: strength of the pull toward the reference; ORPO: weight of the "
        "odds-ratio term; SimPO: reward scale.",
    )
    sft_weight: float = setting(
        0.0,
        label="SFT term weight",
        low=0,
        high=10,
        methods=("dpo",),
        help="Adds the chosen responses' negative log-likelihood (0: none).",
    )
    label_smoothing: float = setting(
        0.0,
        label="Label smoothing",
        low=0,
        high=0.5,
        high_inclusive=False,
        methods=("dpo",),
        help="Robust, EXO and AOT losses only (TRL ignores it elsewhere): the share of labels "
        "assumed flipped. EXO needs it above 0.",
    )
    simpo_gamma: float = setting(
        0.5,
        label="SimPO margin (gamma)",
        low=0,
        high=10,
        methods=("simpo",),
        help="The target reward margin.",
    )
    desirable_weight: float = setting(
        1.0,
        label="Desirable weight",
        low=0,
        low_inclusive=False,
        high=10,
        methods=("kto",),
        help="Weight of the loss on desirable completions.",
    )
    undesirable_weight: float = setting(
        1.0,
        label="Undesirable weight",
        low=0,
        low_inclusive=False,
        high=10,
        methods=("kto",),
        help="Weight of the loss on undesirable completions.",
    )
    learning_rate: float = setting(
        5e-4,
        label="Learning rate",
        low=0,
        low_inclusive=False,
        high=1,
        high_inclusive=False,
        help="Of the LoRA adapter (higher than a full model's).",
    )
    epochs: int = setting(2, label="Epochs", low=1, high=50)
    # 2 pairs a pass, 2 passes a step: the batch of 4 pairs, in 63 % of the memory and 15 %
    # faster than 4 at once on a 2-core CPU (each pass pads to its own longest pair;
    # docs/benchmarks.md, issue 17).
    batch_size: int = setting(
        2,
        label="Batch size",
        low=1,
        high=256,
        help="Pairs per forward pass; KTO needs at least 2.",
    )
    gradient_accumulation_steps: int = setting(
        2,
        label="Gradient accumulation steps",
        low=1,
        high=256,
        help="Passes per optimizer step: a step learns from batch size x this many pairs.",
    )
    lora_r: int = setting(16, label="LoRA r", low=1, high=512)
    lora_alpha: int = setting(32, label="LoRA alpha", low=1, high=4096)
    lora_dropout: float = setting(0.05, label="LoRA dropout", low=0, high=1, high_inclusive=False)
    max_length: int = setting(
        512,
        label="Max length",
        low=32,
        high=32768,
        help="Tokens of prompt and response; longer pairs are truncated.",
    )
    seed: int = setting(0, label="Seed", low=0, high=SEED_MAX)
    optimizer: str = setting(
        "adamw_torch_fused",
        label="Optimizer",
        choices=OPTIMIZERS,
        help="Paged 8-bit AdamW keeps the adapter's optimizer state in 8 bits and pages it "
        "to the host when the GPU runs short (a CUDA GPU only).",
    )


TRAINING_FIELDS = field_specs(Hyperparameters)


def hyperparameters_problem(values: Hyperparameters) -> str | None:
    """Why ``values`` cannot train (a sentence naming the field), or None."""
    for spec in TRAINING_FIELDS.values():
        problem = spec.problem(getattr(values, spec.name))
        if problem is not None:
            return problem
    if values.method == "dpo" and values.label_smoothing > 0:
        if values.loss_type not in LABEL_SMOOTHING_LOSSES:
            return (
                f"label_smoothing acts only in the {', '.join(LABEL_SMOOTHING_LOSSES)} losses; "
                f"TRL ignores it in {values.loss_type}: set it to 0 or pick one of those losses."
            )
    elif values.method == "dpo" and values.loss_type == "exo_pair":
        return "label_smoothing must be above 0 for the exo_pair loss (the EXO paper uses 0.001)."
    if values.method == "kto" and values.batch_size < 2:
        return "batch_size must be at least 2 for KTO (its KL estimate pairs the rows of a batch)."
    return None


def hyperparameters_validate(values: Hyperparameters) -> None:
    """Raise ValueError naming the first invalid setting of ``values``."""
    problem = hyperparameters_problem(values)
    if problem is not None:
        raise ValueError(problem)


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


@dataclass(frozen=True, kw_only=True)
class SamplingParameters:
    """How a round samples its responses."""

    max_new_tokens: int = setting(200, label="Max new tokens", low=8, high=4096)
    temperature: float = setting(0.9, label="Temperature", low=0, high=5, help="0: greedy.")
    top_p: float = setting(0.95, label="Top-p", low=0, low_inclusive=False, high=1)
    seed: int = setting(0, label="Seed", low=0, high=SEED_MAX)
    # 16 measured fastest on 2 cores (bench/engine_generation.py).
    batch_size: int = setting(
        16, label="Generation batch size", low=1, high=256, help="Prompts per forward pass."
    )


SAMPLING_FIELDS = field_specs(SamplingParameters)


def sampling_problem(values: SamplingParameters) -> str | None:
    """Why ``values`` cannot sample (a sentence naming the field), or None."""
    for spec in SAMPLING_FIELDS.values():
        problem = spec.problem(getattr(values, spec.name))
        if problem is not None:
            return problem
    return None
