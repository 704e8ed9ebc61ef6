"""The engine's settings spec (alignment.engine.spec) as form fields and API serializer
fields: the same bounds, defaults, labels, help and messages as the services."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from rest_framework import serializers

from alignment.engine.spec import FieldSpec


class SpecValidator:
    """Refuses what the spec refuses, with the services' message (it names the field)."""

    def __init__(self, spec: FieldSpec) -> None:
        self.spec = spec

    def __call__(self, value: Any) -> None:
        problem = self.spec.problem(value)
        if problem is not None:
            # Not "invalid": a form field would put its own message for that code in place.
            raise ValidationError(problem, code="out_of_range")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpecValidator) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec.name)


def form_field(spec: FieldSpec, *, required: bool = False) -> forms.Field:
    """A form field for ``spec``, starting at its default (an empty optional field means the
    default: see `form_values`)."""
    common: dict[str, Any] = {
        "label": spec.label,
        "help_text": spec.help_text(),
        "initial": spec.default,
        "required": required,
        "validators": [SpecValidator(spec)],
    }
    field: forms.Field
    if spec.choices is not None:
        field = forms.ChoiceField(choices=list(spec.choices.items()), **common)
    elif spec.kind is int:
        field = forms.IntegerField(**common)
    else:
        field = forms.FloatField(**common)
    # The browser's hint only (its min and max include the end); the validator decides.
    if spec.low is not None:
        field.widget.attrs["min"] = spec.low
    if spec.high is not None:
        field.widget.attrs["max"] = spec.high
    return field


def form_fields(
    specs: Mapping[str, FieldSpec], *, required: bool = False
) -> dict[str, forms.Field]:
    return {name: form_field(spec, required=required) for name, spec in specs.items()}


def form_values(specs: Mapping[str, FieldSpec], cleaned_data: Mapping[str, Any]) -> dict[str, Any]:
    """The values given for ``specs``; a field left empty is left out (it takes the default)."""
    return {name: cleaned_data[name] for name in specs if cleaned_data.get(name) not in (None, "")}


def serializer_field(
    spec: FieldSpec, *, with_default: bool = False
) -> serializers.Field[Any, Any, Any, Any]:
    """An optional serializer field for ``spec``; ``with_default``: one left out takes the
    spec's default (else it is absent from the validated data)."""
    common: dict[str, Any] = {
        "label": spec.label,
        "help_text": spec.help_text(),
        "validators": [SpecValidator(spec)],
        **({"default": spec.default} if with_default else {"required": False}),
    }
    field: serializers.Field[Any, Any, Any, Any]
    if spec.choices is not None:
        return serializers.ChoiceField(choices=list(spec.choices.items()), **common)
    if spec.kind is int:
        field = serializers.IntegerField(**common)
    else:
        field = serializers.FloatField(**common)
    # For the schema only (set after __init__, which would add a second validator with
    # another message); an excluded end is in the help text, not the schema.
    if spec.low is not None and spec.low_inclusive:
        field.min_value = spec.low
    if spec.high is not None and spec.high_inclusive:
        field.max_value = spec.high
    return field


def serializer_fields(
    specs: Mapping[str, FieldSpec], *, with_default: bool = False
) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
    return {name: serializer_field(spec, with_default=with_default) for name, spec in specs.items()}
