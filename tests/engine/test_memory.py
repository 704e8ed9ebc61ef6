"""The pre-flight memory estimate, and a run refused at once when it cannot fit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alignment.engine import training
from alignment.engine.memory import memory_estimate, model_shape
from tests.factories import preference_examples_make, training_config_make


def _estimate(model: str, **overrides: object) -> float:
    shape = model_shape(model)
    assert shape is not None
    settings: dict[str, object] = {
        "method": "dpo",
        "batch_size": 4,
        "tokens_per_sequence": 250,
        "lora_r": 16,
        "quantize_4bit": True,
        "compute_bytes": 2,
    }
    settings.update(overrides)
    return memory_estimate(shape=shape, **settings).total_mb  # type: ignore[arg-type]


def test_it_matches_the_measured_qlora_run_within_a_third(smollm2_path: str) -> None:
    # bench/engine_training.py: SmolLM2-135M, NF4, bf16, batch 4 of ~250 tokens: 6.6 GB peak.
    assert 6.6 * 1024 * 0.67 < _estimate(smollm2_path) < 6.6 * 1024 * 1.33


def test_it_grows_with_the_batch_and_the_sequences_and_shrinks_with_4bit(
    smollm2_path: str,
) -> None:
    base = _estimate(smollm2_path)
    assert _estimate(smollm2_path, batch_size=8) > base * 1.7
    assert _estimate(smollm2_path, tokens_per_sequence=500) > base * 1.8
    assert _estimate(smollm2_path, quantize_4bit=False) > base
    assert _estimate(smollm2_path, compute_bytes=4) > base * 1.5


def test_a_run_that_cannot_fit_fails_at_once_naming_what_to_lower(
    tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "memory_available_mb", lambda: 256.0)
    config = dataclasses.replace(training_config_make(tiny_model_dir, tmp_path), batch_size=64)
    with pytest.raises(MemoryError, match=r"batch_size 64 .* needs about .* GB; this machine has"):
        training.train(config, preference_examples_make(2))
    assert not (tmp_path / "adapter").exists()
