from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from alignment.engine.training import (
    PreferenceExample,
    TrainingConfig,
    TrainingProgress,
    train,
)


def _examples(count: int) -> list[PreferenceExample]:
    return [
        PreferenceExample(
            prompt=({"role": "user", "content": f"Say something about number {i}."},),
            chosen=f"Number {i} is fine.",
            rejected=f"Number {i} is a number that goes on and on and on, at great length.",
        )
        for i in range(count)
    ]


def _config(model_dir: str, output_dir: Path, **overrides: object) -> TrainingConfig:
    base = TrainingConfig(
        model=model_dir,
        models_dir="unused",
        output_dir=str(output_dir),
        quantize_4bit=False,
        learning_rate=1e-2,
        epochs=3,
        batch_size=2,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        max_length=64,
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_it_lowers_the_loss_and_reports_every_step(tiny_model_dir: str, tmp_path: Path) -> None:
    progress: list[TrainingProgress] = []
    result = train(_config(tiny_model_dir, tmp_path), _examples(4), on_progress=progress.append)
    assert result.steps == 6  # 2 batches x 3 epochs
    assert [p.step for p in progress] == [1, 2, 3, 4, 5, 6]
    assert {p.total_steps for p in progress} == {6}
    assert progress[-1].epoch == pytest.approx(3.0)
    losses = [p.loss for p in progress]
    assert all(loss is not None for loss in losses)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: the policy starts at the reference
    assert losses[-1] < losses[0] - 0.1
    assert progress[-1].reward_accuracy == pytest.approx(1.0)
    assert progress[-1].reward_margin is not None and progress[-1].reward_margin > 0
    assert progress[-1].chosen_reward is not None and progress[-1].rejected_reward is not None
    assert result.history == tuple(progress)
    assert result.train_loss == pytest.approx(sum(losses) / len(losses), rel=1e-3)


def test_it_saves_only_a_safetensors_adapter_with_its_sha256(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    result = train(_config(tiny_model_dir, tmp_path, epochs=1), _examples(2))
    adapter = Path(result.adapter_dir)
    assert adapter == tmp_path / "adapter"
    weights = adapter / "adapter_model.safetensors"
    assert result.adapter_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["task_type"]) == (4, "CAUSAL_LM")
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    # No Trainer checkpoints, no leftover temporary directories.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_it_continues_an_existing_adapter(tiny_model_dir: str, tmp_path: Path) -> None:
    first = train(_config(tiny_model_dir, tmp_path / "one", epochs=1), _examples(2))
    progress: list[TrainingProgress] = []
    second = train(
        _config(tiny_model_dir, tmp_path / "two", epochs=1, init_adapter=first.adapter_dir),
        _examples(2),
        on_progress=progress.append,
    )
    assert second.adapter_sha256 != first.adapter_sha256
    # The reference is the initial adapter, so training starts from a zero margin again.
    assert progress[0].loss == pytest.approx(0.6931, abs=1e-3)
    assert sorted(p.name for p in Path(second.adapter_dir).iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


def test_it_replaces_a_previous_adapter(tiny_model_dir: str, tmp_path: Path) -> None:
    first = train(_config(tiny_model_dir, tmp_path, epochs=1), _examples(2))
    second = train(_config(tiny_model_dir, tmp_path, epochs=1, seed=1), _examples(2))
    weights = Path(second.adapter_dir) / "adapter_model.safetensors"
    assert second.adapter_sha256 != first.adapter_sha256
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == second.adapter_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_it_trains_with_a_4bit_base(tiny_model_dir: str, tmp_path: Path) -> None:
    progress: list[TrainingProgress] = []
    result = train(
        _config(tiny_model_dir, tmp_path, quantize_4bit=True, epochs=2),
        _examples(2),
        on_progress=progress.append,
    )
    assert result.steps == 2
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
    assert progress[-1].loss is not None and progress[-1].loss < progress[0].loss


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_it_trains_with_other_losses(tiny_model_dir: str, tmp_path: Path, loss_type: str) -> None:
    result = train(_config(tiny_model_dir, tmp_path, loss_type=loss_type, epochs=1), _examples(2))
    assert result.steps == 1


def test_it_rejects_no_examples(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no preference examples"):
        train(_config(tiny_model_dir, tmp_path), [])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loss_type", "best"),
        ("epochs", 0),
        ("beta", 0.0),
        ("batch_size", -1),
        ("learning_rate", 2.0),
        ("lora_dropout", 1.0),
        ("init_adapter", "/nonexistent"),
    ],
)
def test_it_rejects_invalid_config_values(
    tiny_model_dir: str, tmp_path: Path, field: str, value: object
) -> None:
    pattern = "adapter" if field == "init_adapter" else field
    with pytest.raises(ValueError, match=pattern):
        train(_config(tiny_model_dir, tmp_path, **{field: value}), _examples(2))


def test_it_rejects_a_prompt_that_does_not_end_with_a_user_turn(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    bad = PreferenceExample(
        prompt=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}),
        chosen="a",
        rejected="b",
    )
    with pytest.raises(ValueError, match="example 0"):
        train(_config(tiny_model_dir, tmp_path), [bad])
