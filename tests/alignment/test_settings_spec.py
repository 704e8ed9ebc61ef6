"""One spec of the training and sampling settings (alignment.engine.spec): the engine, the
services, the lead's forms, the API's serializers and the loop check's options refuse and
accept the same values, and offer the same fields, methods and losses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from typing import Any

import pytest
from django.core.management import CommandError

from alignment.api import RoundIn, SamplingIn, TrainingRunIn, TrainingSettingsIn
from alignment.engine.spec import (
    LOSS_TYPES,
    SAMPLING_FIELDS,
    TRAINING_FIELDS,
    TRAINING_PRESETS,
    FieldSpec,
)
from alignment.engine.training import TrainingConfig, training_config_validate
from alignment.forms import RoundStartForm, TrainingRunStartForm
from alignment.management.commands.loop_check import Command as LoopCheck
from alignment.models import DataScope, ModelVersion
from alignment.services.rounds import ROUND_SIZE_FIELDS, SamplingSettings
from alignment.services.training import TrainingPlan
from alignment.services.training_settings import TrainingSettings
from core.errors import ValidationFailed

Accepts = Callable[[str, Any], bool]


def _probes(spec: FieldSpec) -> Iterator[tuple[Any, bool]]:
    """Values at and around each end of ``spec``'s range, each with whether the spec takes it."""
    if spec.choices is not None:
        yield from ((choice, True) for choice in spec.choices)
        yield "no-such-choice", False
        return
    for end, inclusive, outward in (
        (spec.low, spec.low_inclusive, -1),
        (spec.high, spec.high_inclusive, 1),
    ):
        if end is None:
            continue
        step = 1 if spec.kind is int else 1e-6 * max(abs(end), 1)
        yield spec.kind(end), inclusive
        yield spec.kind(end + outward * step), False
        yield spec.kind(end - outward * step), True
    yield spec.default, True


def _refused(action: Callable[[], object], *errors: type[Exception]) -> bool:
    try:
        action()
    except errors:
        return True
    return False


def _loop_check_takes(flag: str, value: Any) -> bool:
    return _loop_check_parses([flag, str(value)])


def _loop_check_parses(arguments: list[str]) -> bool:
    parser = LoopCheck().create_parser("manage.py", "loop_check")
    return not _refused(lambda: parser.parse_args(arguments), CommandError)


def _training_context(name: str, value: Any) -> dict[str, Any]:
    """The other settings a probed value needs to be valid on its own terms: label smoothing
    acts only in some losses, and exo_pair needs some."""
    if name == "label_smoothing":
        return {"loss_type": "robust"}
    if name == "loss_type" and value == "exo_pair":
        return {"label_smoothing": 0.001}
    return {}


def _training_takers() -> dict[str, Accepts]:
    versions = ModelVersion.objects.none()

    def form(name: str, value: Any) -> bool:
        data = {k: str(v) for k, v in _training_context(name, value).items()}
        bound = TrainingRunStartForm({**data, name: str(value)}, versions=versions)
        bound.is_valid()
        return name not in bound.errors

    def settings(name: str, value: Any) -> bool:
        data = {**_training_context(name, value), name: value}
        return not _refused(lambda: TrainingSettings.from_mapping(data), ValidationFailed)

    def engine(name: str, value: Any) -> bool:
        data = {**_training_context(name, value), name: value}
        config = TrainingConfig(model="m", models_dir="m", output_dir="o", **data)
        return not _refused(lambda: training_config_validate(config), ValueError)

    def api(name: str, value: Any) -> bool:
        return TrainingSettingsIn(data={**_training_context(name, value), name: value}).is_valid()

    def loop_check(name: str, value: Any) -> bool:
        flags = [
            f"--train-{k.replace('_', '-')}={v}"
            for k, v in {**_training_context(name, value), name: value}.items()
        ]
        return _loop_check_parses(flags)

    return {
        "form": form,
        "api": api,
        "settings": settings,
        "engine": engine,
        "loop check": loop_check,
    }


def _sampling_takers() -> dict[str, Accepts]:
    versions = ModelVersion.objects.none()

    def form(name: str, value: Any) -> bool:
        bound = RoundStartForm({name: str(value)}, versions=versions)
        bound.is_valid()
        return name not in bound.errors

    def settings(name: str, value: Any) -> bool:
        return not _refused(lambda: SamplingSettings(**{name: value}).validate(), ValidationFailed)

    return {
        "form": form,
        "api": lambda name, value: SamplingIn(data={name: value}).is_valid(),
        "settings": settings,
        "loop check": lambda name, value: _loop_check_takes("--" + name.replace("_", "-"), value),
    }


@pytest.mark.parametrize("name", list(TRAINING_FIELDS))
def test_it_takes_and_refuses_each_training_setting_alike_everywhere(name: str) -> None:
    spec = TRAINING_FIELDS[name]
    takers = _training_takers()
    for value, valid in _probes(spec):
        verdicts = {where: takes(name, value) for where, takes in takers.items()}
        assert verdicts == dict.fromkeys(takers, valid), (name, value)


@pytest.mark.parametrize("name", list(SAMPLING_FIELDS))
def test_it_takes_and_refuses_each_sampling_setting_alike_everywhere(name: str) -> None:
    spec = SAMPLING_FIELDS[name]
    takers = _sampling_takers()
    for value, valid in _probes(spec):
        verdicts = {where: takes(name, value) for where, takes in takers.items()}
        assert verdicts == dict.fromkeys(takers, valid), (name, value)


def test_it_names_the_field_and_its_range_in_every_refusal() -> None:
    message = "label_smoothing must be at least 0 and below 0.5."
    form = TrainingRunStartForm({"label_smoothing": "0.5"}, versions=ModelVersion.objects.none())
    assert not form.is_valid() and form.errors["label_smoothing"] == [message]
    api = TrainingSettingsIn(data={"label_smoothing": 0.5})
    assert not api.is_valid() and api.errors["label_smoothing"] == [message]
    with pytest.raises(ValidationFailed, match=message):
        TrainingSettings.from_mapping({"label_smoothing": 0.5})
    config = TrainingConfig(model="m", models_dir="m", output_dir="o", label_smoothing=0.5)
    with pytest.raises(ValueError, match=message):
        training_config_validate(config)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"loss_type": "sigmoid", "label_smoothing": 0.1}, "TRL ignores it in sigmoid"),
        ({"loss_type": "ipo", "label_smoothing": 0.2}, "TRL ignores it in ipo"),
        ({"loss_type": "exo_pair"}, "must be above 0 for the exo_pair loss"),
    ],
)
def test_it_refuses_label_smoothing_where_trl_ignores_it(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationFailed, match=message):
        TrainingSettings.from_mapping(values)
    config = TrainingConfig(model="m", models_dir="m", output_dir="o", **values)
    with pytest.raises(ValueError, match=message):
        training_config_validate(config)
    TrainingSettings.from_mapping({**values, "loss_type": "robust", "label_smoothing": 0.1})


def test_it_refuses_a_kto_batch_of_one_in_the_settings_and_the_engine() -> None:
    with pytest.raises(ValidationFailed, match="batch_size must be at least 2 for KTO"):
        TrainingSettings.from_mapping({"method": "kto", "batch_size": 1})
    config = TrainingConfig(model="m", models_dir="m", output_dir="o", method="kto", batch_size=1)
    with pytest.raises(ValueError, match="batch_size must be at least 2 for KTO"):
        training_config_validate(config)


def test_it_offers_in_the_forms_every_setting_the_api_accepts() -> None:
    versions = ModelVersion.objects.none()
    training_api = set(TrainingSettingsIn().fields)
    assert training_api == set(TRAINING_FIELDS)
    assert training_api <= set(TrainingRunStartForm(versions=versions).fields)
    round_api = set(RoundIn().fields) - {"policy_id", "sampling"}
    round_form = set(RoundStartForm(versions=versions).fields) - {"policy"}
    assert round_api | set(SamplingIn().fields) == round_form
    assert set(ROUND_SIZE_FIELDS) <= round_api


def test_it_lists_every_loss_and_method_the_engine_supports() -> None:
    form = TrainingRunStartForm(versions=ModelVersion.objects.none())
    api = TrainingSettingsIn().fields
    for name in ("method", "loss_type"):
        choices = TRAINING_FIELDS[name].choices
        assert choices is not None
        assert [key for key, _ in form.fields[name].choices] == list(choices)  # type: ignore[attr-defined]
        assert list(api[name].choices) == list(choices)  # type: ignore[attr-defined]
    assert len(LOSS_TYPES) == 15 and {"sigmoid", "ipo", "robust", "apo_zero"} <= set(LOSS_TYPES)


def test_it_starts_the_engine_the_settings_and_the_pages_from_the_same_defaults() -> None:
    defaults = {name: spec.default for name, spec in TRAINING_FIELDS.items()}
    config = TrainingConfig(model="m", models_dir="m", output_dir="o")
    assert asdict(TrainingSettings()) == defaults
    assert {f.name: getattr(config, f.name) for f in fields(config) if f.name in defaults} == (
        defaults
    )
    form = TrainingRunStartForm(versions=ModelVersion.objects.none())
    assert {name: form.fields[name].initial for name in defaults} == defaults
    sampling = {name: spec.default for name, spec in SAMPLING_FIELDS.items()}
    assert asdict(SamplingSettings()) == sampling
    sampling_in = SamplingIn(data={})
    assert sampling_in.is_valid() and dict(sampling_in.validated_data) == sampling
    body = TrainingRunIn(data={"base_version_id": 1})
    assert body.is_valid(), body.errors
    assert (body.validated_data["start_from"], body.validated_data["reference"]) == (
        TrainingPlan.start_from,
        TrainingPlan.reference,
    )


@pytest.mark.parametrize("preset", list(TRAINING_PRESETS))
def test_it_trains_every_preset_as_the_engine_validates_it(preset: str) -> None:
    settings = TrainingSettings.from_preset(preset)
    training_config_validate(
        TrainingConfig(model="m", models_dir="m", output_dir="o", **asdict(settings))
    )


def test_it_takes_listed_rounds_as_the_rounds_scope_on_the_page_and_in_the_api() -> None:
    form = TrainingRunStartForm(
        {"rounds": "2, 1, 2", "min_agreement": "0"}, versions=ModelVersion.objects.none()
    )
    form.is_valid()
    assert form.plan() == TrainingPlan(data_scope=DataScope.ROUNDS, rounds=(1, 2))
    assert TrainingPlan.chosen(rounds=[2, 1, 2]) == form.plan()
    assert TrainingPlan.chosen() == TrainingPlan()
    assert TrainingPlan.chosen(data_scope=DataScope.ROUND).data_scope == DataScope.ROUND
