"""Forms of the lead's pages. They parse input; the services own the rules and their messages."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from django import forms
from django.db.models import QuerySet

from alignment.models import (
    DataScope,
    ModelVersion,
    PairingStrategy,
    PairSelection,
    Reference,
    StartFrom,
)
from alignment.services.rounds import PROMPT_CHOICES, SamplingSettings
from alignment.services.training import TrainingPlan
from alignment.services.training_settings import (
    LOSS_TYPES,
    METHODS,
    TRAINING_PRESETS,
    TrainingSettings,
)

_SAMPLING = SamplingSettings()
_TRAINING = TrainingSettings()


class ModelVersionField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        version: ModelVersion = obj
        return f"{version.name} (from {version.parent.name})" if version.parent else version.name


def _version_field(
    versions: QuerySet[ModelVersion], label: str, help_text: str
) -> ModelVersionField:
    return ModelVersionField(
        queryset=versions,
        label=label,
        help_text=help_text,
        empty_label=None,
        initial=versions.first(),
    )


class RoundStartForm(forms.Form):
    """Start the next round from a chosen model version."""

    # Ranges of the sampling values are checked by SamplingSettings.validate, so the page shows
    # the same messages as the API and the CLI.
    policy = forms.ModelChoiceField(queryset=ModelVersion.objects.none())
    pairing_strategy = forms.ChoiceField(
        choices=PairingStrategy.choices, initial=PairingStrategy.ON_POLICY
    )
    train_prompts = forms.IntegerField(
        label="Training prompts",
        initial=40,
        min_value=0,
        max_value=100_000,
        help_text="Chosen least used first. Used by on-policy pairs.",
    )
    prompt_choice = forms.ChoiceField(
        label="Choose training prompts",
        choices=list(PROMPT_CHOICES.items()),
        initial="least_used",
        required=False,
        help_text="Held-out prompts are never chosen for training.",
    )
    eval_prompts = forms.IntegerField(
        label="Held-out prompts for head-to-head",
        initial=20,
        min_value=0,
        max_value=100_000,
        help_text="The project's held-out (eval split) prompts, in id order.",
    )
    samples_per_prompt = forms.IntegerField(initial=2, min_value=1, max_value=64)
    pair_selection = forms.ChoiceField(
        label="Pair shown per prompt",
        choices=PairSelection.choices,
        initial=PairSelection.ADJACENT,
        required=False,
        help_text="With more than 2 samples per prompt, which two the annotators compare.",
    )
    max_new_tokens = forms.IntegerField(initial=_SAMPLING.max_new_tokens)
    temperature = forms.FloatField(initial=_SAMPLING.temperature)
    top_p = forms.FloatField(label="Top-p", initial=_SAMPLING.top_p)
    seed = forms.IntegerField(initial=_SAMPLING.seed)

    def __init__(self, *args: Any, versions: QuerySet[ModelVersion], **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["policy"] = _version_field(
            versions, "Model version", "The policy that generates this round's responses."
        )

    def sampling(self) -> SamplingSettings:
        data = self.cleaned_data
        return SamplingSettings(
            max_new_tokens=data["max_new_tokens"],
            temperature=data["temperature"],
            top_p=data["top_p"],
            seed=data["seed"],
        )


_ROUNDS_RE = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")


class TrainingRunStartForm(forms.Form):
    """Train a new model version on the current preference pairs."""

    base_version = forms.ModelChoiceField(queryset=ModelVersion.objects.none())
    start_from = forms.ChoiceField(
        label="Training starts from",
        choices=StartFrom.choices,
        initial=StartFrom.PARENT,
        required=False,
        widget=forms.RadioSelect,
    )
    reference = forms.ChoiceField(
        label="Reference policy",
        choices=[
            (Reference.PARENT, Reference.PARENT.label),
            (Reference.BASE, Reference.BASE.label),
        ],
        initial=Reference.PARENT,
        required=False,
        widget=forms.RadioSelect,
        help_text="DPO and KTO; ORPO and SimPO use none.",
    )
    data_scope = forms.ChoiceField(
        label="Data",
        choices=DataScope.choices,
        initial=DataScope.CUMULATIVE,
        required=False,
        widget=forms.RadioSelect,
    )
    method = forms.ChoiceField(
        choices=list(METHODS.items()), initial=_TRAINING.method, required=False
    )
    loss_type = forms.ChoiceField(
        label="DPO loss",
        choices=list(LOSS_TYPES.items()),
        initial=_TRAINING.loss_type,
        help_text="DPO only.",
    )
    beta = forms.FloatField(
        initial=_TRAINING.beta,
        help_text="DPO, KTO: strength of the pull toward the reference; ORPO: weight of the "
        "odds-ratio term; SimPO: reward scale.",
    )
    sft_weight = forms.FloatField(
        required=False,
        label="SFT term weight",
        initial=_TRAINING.sft_weight,
        help_text="DPO: adds the chosen responses' negative log-likelihood (0: none).",
    )
    label_smoothing = forms.FloatField(
        required=False,
        initial=_TRAINING.label_smoothing,
        help_text="Robust DPO: the share of labels assumed flipped (below 0.5).",
    )
    simpo_gamma = forms.FloatField(
        required=False,
        label="SimPO margin (gamma)",
        initial=_TRAINING.simpo_gamma,
        help_text="SimPO only.",
    )
    desirable_weight = forms.FloatField(
        required=False, initial=_TRAINING.desirable_weight, help_text="KTO only."
    )
    undesirable_weight = forms.FloatField(
        required=False, initial=_TRAINING.undesirable_weight, help_text="KTO only."
    )
    learning_rate = forms.FloatField(initial=_TRAINING.learning_rate)
    epochs = forms.IntegerField(initial=_TRAINING.epochs)
    batch_size = forms.IntegerField(initial=_TRAINING.batch_size)
    lora_r = forms.IntegerField(label="LoRA r", initial=_TRAINING.lora_r)
    lora_alpha = forms.IntegerField(label="LoRA alpha", initial=_TRAINING.lora_alpha)
    max_length = forms.IntegerField(initial=_TRAINING.max_length)
    seed = forms.IntegerField(initial=_TRAINING.seed)
    rounds = forms.CharField(
        label="Rounds listed",
        required=False,
        help_text="With “the rounds listed”: comma-separated round numbers, e.g. 1, 2.",
    )
    min_agreement = forms.FloatField(
        initial=0.0,
        min_value=0.0,
        max_value=1.0,
        help_text="Only pairs whose judgments agree at least this much (0 to 1).",
    )

    SETTINGS_FIELDS = (
        "method",
        "loss_type",
        "beta",
        "sft_weight",
        "label_smoothing",
        "simpo_gamma",
        "desirable_weight",
        "undesirable_weight",
        "learning_rate",
        "epochs",
        "batch_size",
        "lora_r",
        "lora_alpha",
        "max_length",
        "seed",
    )

    field_order = (
        "base_version",
        "start_from",
        "reference",
        *SETTINGS_FIELDS,
        "data_scope",
        "rounds",
        "min_agreement",
    )

    def __init__(
        self,
        *args: Any,
        versions: QuerySet[ModelVersion],
        preset: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["base_version"] = _version_field(
            versions,
            "Parent version",
            "The policy whose round is being trained on; the new version's parent.",
        )
        if preset in TRAINING_PRESETS:  # the page's preset links start the form from one
            for name, value in asdict(TrainingSettings.from_preset(preset)).items():
                if name in self.fields:
                    self.fields[name].initial = value

    def clean_rounds(self) -> tuple[int, ...]:
        value: str = self.cleaned_data.get("rounds") or ""
        if not value.strip():
            return ()
        if not _ROUNDS_RE.match(value):
            raise forms.ValidationError("Rounds must be comma-separated round numbers, e.g. 1, 2.")
        return tuple(sorted({int(part) for part in value.split(",") if part.strip()}))

    def plan(self) -> TrainingPlan:
        """The round's choices; a post without them (an older form) takes the defaults, and
        listed rounds mean "the rounds listed"."""
        data = self.cleaned_data
        rounds = data.get("rounds") or ()
        return TrainingPlan(
            start_from=data.get("start_from") or StartFrom.PARENT,
            reference=data.get("reference") or Reference.PARENT,
            data_scope=data.get("data_scope")
            or (DataScope.ROUNDS if rounds else DataScope.CUMULATIVE),
            rounds=rounds,
        )

    def settings_mapping(self) -> dict[str, Any]:
        """The settings given; a field left empty takes the engine's default."""
        return {
            name: self.cleaned_data[name]
            for name in self.SETTINGS_FIELDS
            if self.cleaned_data.get(name) not in (None, "")
        }
