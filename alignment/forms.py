"""Forms of the lead's pages. They parse input; the services own the rules and their messages."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django import forms
from django.db.models import QuerySet

from alignment.engine.spec import METHODS, SAMPLING_FIELDS, TRAINING_FIELDS, TRAINING_PRESETS
from alignment.models import (
    DataScope,
    Judge,
    JudgeMode,
    ModelVersion,
    PairingStrategy,
    PairSelection,
    Reference,
    StartFrom,
)
from alignment.services.rounds import (
    MAX_GUIDANCE_CHARS,
    PROMPT_CHOICES,
    ROUND_SIZE_FIELDS,
    SamplingSettings,
)
from alignment.services.training import TrainingPlan
from alignment.services.training_settings import TrainingSettings
from alignment.spec_fields import form_fields, form_values
from core.http import numbers_parse


class ModelVersionField(forms.ModelChoiceField[ModelVersion]):
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

    # The counts and the sampling values: fields of their specs (ROUND_SIZE_FIELDS,
    # SAMPLING_FIELDS), added in __init__, with the services' bounds and messages.
    policy = forms.ModelChoiceField(queryset=ModelVersion.objects.none())
    pairing_strategy = forms.ChoiceField(
        choices=PairingStrategy.choices, initial=PairingStrategy.ON_POLICY
    )
    prompt_choice = forms.ChoiceField(
        label="Choose training prompts",
        choices=list(PROMPT_CHOICES.items()),
        initial="least_used",
        required=False,
        help_text="Held-out prompts are never chosen for training.",
    )
    pair_selection = forms.ChoiceField(
        label="Pair shown per prompt",
        choices=PairSelection.choices,
        initial=PairSelection.ADJACENT,
        required=False,
        help_text="With more than 2 samples per prompt, which two the annotators compare.",
    )
    guidance = forms.CharField(
        label="Guidance for half the samples",
        required=False,
        max_length=MAX_GUIDANCE_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="What the annotators prefer, in a sentence or two. Added to the prompt of "
        "half of each prompt's samples (an even number of samples per prompt), so the pairs "
        "show what the model seldom writes unprompted; the pairs keep the plain prompt. "
        "Empty: no guided samples.",
    )

    field_order = (
        "policy",
        "pairing_strategy",
        "train_prompts",
        "prompt_choice",
        "eval_prompts",
        "samples_per_prompt",
        "pair_selection",
        "guidance",
        *SAMPLING_FIELDS,
    )

    def __init__(self, *args: Any, versions: QuerySet[ModelVersion], **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields.update(form_fields(ROUND_SIZE_FIELDS, required=True))
        self.fields.update(form_fields(SAMPLING_FIELDS))
        self.order_fields(self.field_order)
        self.fields["policy"] = _version_field(
            versions, "Model version", "The policy that generates this round's responses."
        )

    def sampling(self) -> SamplingSettings:
        """The sampling given; a field left empty takes its default."""
        return SamplingSettings(**form_values(SAMPLING_FIELDS, self.cleaned_data))


class TrainingRunStartForm(forms.Form):
    """Train a new model version on the current preference pairs."""

    base_version = forms.ModelChoiceField(queryset=ModelVersion.objects.none())
    start_from = forms.ChoiceField(
        label="Training starts from",
        choices=StartFrom.choices,
        initial=TrainingPlan.start_from,
        required=False,
        widget=forms.RadioSelect,
    )
    reference = forms.ChoiceField(
        label="Reference policy",
        choices=[
            (Reference.PARENT, Reference.PARENT.label),
            (Reference.BASE, Reference.BASE.label),
        ],
        initial=TrainingPlan.reference,
        required=False,
        widget=forms.RadioSelect,
        help_text="DPO and KTO; ORPO and SimPO use none.",
    )
    data_scope = forms.ChoiceField(
        label="Data",
        choices=DataScope.choices,
        initial=TrainingPlan.data_scope,
        required=False,
        widget=forms.RadioSelect,
    )
    # The hyperparameters: fields of the spec (TRAINING_FIELDS), added in __init__.
    rounds = forms.CharField(
        label="Rounds listed",
        required=False,
        max_length=2000,
        help_text="With “the rounds listed”: comma-separated round numbers, e.g. 1, 2.",
    )
    min_agreement = forms.FloatField(
        initial=0.0,
        min_value=0.0,
        max_value=1.0,
        help_text="Only pairs whose judgments agree at least this much (0 to 1).",
    )

    SETTINGS_FIELDS = tuple(TRAINING_FIELDS)

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
        self.fields.update(form_fields(TRAINING_FIELDS))
        for spec in TRAINING_FIELDS.values():
            if set(spec.methods) != set(METHODS):
                # The page shows it only while one of its methods is chosen (static/js/app.js).
                self.fields[spec.name].widget.attrs["data-methods"] = " ".join(spec.methods)
        self.order_fields(self.field_order)
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
        try:
            rounds = numbers_parse(self.cleaned_data.get("rounds") or "", name="Rounds")
        except ValueError as error:
            raise forms.ValidationError(str(error)) from None
        return tuple(sorted(set(rounds)))

    def plan(self) -> TrainingPlan:
        """The round's choices; a post without them (an older form) takes the defaults, and
        listed rounds mean "the rounds listed"."""
        data = self.cleaned_data
        return TrainingPlan.chosen(
            start_from=data.get("start_from"),
            reference=data.get("reference"),
            data_scope=data.get("data_scope"),
            rounds=data.get("rounds") or (),
        )

    def settings_mapping(self) -> dict[str, Any]:
        """The settings given; a field left empty takes the engine's default."""
        return form_values(TRAINING_FIELDS, self.cleaned_data)


class JudgeAddForm(forms.ModelForm[Judge]):
    """Add a model judge; the service (alignment.services.judges) checks it can work."""

    class Meta:
        model = Judge
        fields = [
            "name",
            "kind",
            "mode",
            "rule",
            "base_url",
            "model_name",
            "api_key_env",
            "requests_per_minute",
            "timeout_seconds",
            "max_retries",
            "usd_per_million_input",
            "usd_per_million_output",
        ]
        labels = {
            "base_url": "Endpoint base URL",
            "api_key_env": "API key's environment variable",
            "usd_per_million_input": "USD per million input tokens",
            "usd_per_million_output": "USD per million output tokens",
        }
        help_texts = {
            "rule": "A rule judge: a builtin (shorter, no_lists, asks_followup, ...) or "
            "package.module:function.",
            "model_name": "An LLM judge: the model the endpoint serves, as it names it.",
        }


class JudgeRunForm(forms.Form):
    mode = forms.ChoiceField(choices=JudgeMode.choices, label="What its answers do")
    round_number = forms.IntegerField(
        required=False, min_value=1, label="Round", help_text="Only this round (empty: all)."
    )
    limit = forms.IntegerField(
        required=False, min_value=1, help_text="At most this many comparisons (empty: all)."
    )
