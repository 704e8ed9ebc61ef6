"""Each library internal the engine relies on (alignment.engine.internals) is there, with the
parameters the engine passes or overrides: a library upgrade that moves one fails here, by
name, before it fails a training run."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from alignment.engine.internals import INTERNALS, Internal


@pytest.mark.parametrize("internal", INTERNALS, ids=[i.target for i in INTERNALS])
def test_the_internal_is_there_as_the_engine_uses_it(internal: Internal) -> None:
    module_name, qualified = internal.target.split(":")
    found: object = importlib.import_module(module_name)
    for part in qualified.split("."):
        found = getattr(found, part)
    if dataclasses.is_dataclass(found):
        fields = {f.name for f in dataclasses.fields(found)}
        assert set(internal.parameters) <= fields, internal.use
    else:
        parameters = tuple(inspect.signature(found).parameters)  # type: ignore[arg-type]
        assert parameters == internal.parameters, internal.use
