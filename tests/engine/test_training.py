from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from alignment.engine.trainers import StoredRefDPOTrainer
from alignment.engine.training import (
    PreferenceExample,
    TrainingConfig,
    TrainingProgress,
    train,
)
from tests.factories import preference_examples_make, training_config_make


def test_it_lowers_the_loss_and_reports_every_step(tiny_model_dir: str, tmp_path: Path) -> None:
    progress: list[TrainingProgress] = []
    result = train(
        training_config_make(tiny_model_dir, tmp_path),
        preference_examples_make(4),
        on_progress=progress.append,
    )
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
    result = train(
        training_config_make(tiny_model_dir, tmp_path, epochs=1), preference_examples_make(2)
    )
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
    first = train(
        training_config_make(tiny_model_dir, tmp_path / "one", epochs=1),
        preference_examples_make(2),
    )
    progress: list[TrainingProgress] = []
    second = train(
        training_config_make(
            tiny_model_dir, tmp_path / "two", epochs=1, init_adapter=first.adapter_dir
        ),
        preference_examples_make(2),
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
    first = train(
        training_config_make(tiny_model_dir, tmp_path, epochs=1), preference_examples_make(2)
    )
    second = train(
        training_config_make(tiny_model_dir, tmp_path, epochs=1, seed=1),
        preference_examples_make(2),
    )
    weights = Path(second.adapter_dir) / "adapter_model.safetensors"
    assert second.adapter_sha256 != first.adapter_sha256
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == second.adapter_sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_it_trains_with_a_4bit_base(tiny_model_dir_4bit: str, tmp_path: Path) -> None:
    progress: list[TrainingProgress] = []
    result = train(
        training_config_make(tiny_model_dir_4bit, tmp_path, quantize_4bit=True, epochs=2),
        preference_examples_make(2),
        on_progress=progress.append,
    )
    assert result.steps == 2
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
    assert progress[-1].loss is not None and progress[-1].loss < progress[0].loss


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "ipo"},
        {"loss_type": "hinge"},
        {"loss_type": "robust", "label_smoothing": 0.1},
        {"sft_weight": 1.0},  # DPO + an SFT term on the chosen responses
        {"method": "orpo"},
        {"method": "simpo", "beta": 2.0, "simpo_gamma": 0.5},
    ],
    ids=lambda overrides: "-".join(f"{k}={v}" for k, v in overrides.items()),
)
def test_it_trains_with_every_paired_method(
    tiny_model_dir: str, tmp_path: Path, overrides: dict[str, object]
) -> None:
    progress: list[TrainingProgress] = []
    config = training_config_make(tiny_model_dir, tmp_path, epochs=2, **overrides)
    result = train(config, preference_examples_make(2), on_progress=progress.append)
    assert result.steps == 2 and [p.step for p in progress] == [1, 2]
    assert all(p.loss is not None and math.isfinite(p.loss) for p in progress)
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("overrides", "first_loss"),
    [
        ({"loss_type": "sigmoid"}, math.log(2)),  # -log sigmoid(0)
        ({"loss_type": "ipo"}, (1 / (2 * 0.1)) ** 2),  # (0 - 1 / (2 beta))^2
        ({"loss_type": "hinge"}, 1.0),  # max(0, 1 - 0)
        ({"loss_type": "robust", "label_smoothing": 0.2}, math.log(2)),
    ],
    ids=["sigmoid", "ipo", "hinge", "robust"],
)
def test_it_applies_the_loss_asked_for(
    tiny_model_dir: str, tmp_path: Path, overrides: dict[str, object], first_loss: float
) -> None:
    # At the first step the policy is its reference (LoRA starts at zero), so every margin is
    # 0 and each loss takes its known value there.
    progress: list[TrainingProgress] = []
    train(
        training_config_make(tiny_model_dir, tmp_path, epochs=1, **overrides),
        preference_examples_make(2),
        on_progress=progress.append,
    )
    assert progress[0].loss == pytest.approx(first_loss, rel=1e-3)


def test_it_adds_an_sft_term_on_the_chosen_responses(tiny_model_dir: str, tmp_path: Path) -> None:
    progress: list[TrainingProgress] = []
    config = training_config_make(tiny_model_dir, tmp_path, epochs=1, sft_weight=1.0)
    train(config, preference_examples_make(2), on_progress=progress.append)
    # log 2 from the DPO term, plus the chosen responses' negative log-likelihood: several
    # nats for an untrained model.
    assert progress[0].loss is not None and progress[0].loss > math.log(2) + 1.0


def test_it_trains_kto_on_pairs_ties_and_both_bad(tiny_model_dir: str, tmp_path: Path) -> None:
    tie, both_bad = preference_examples_make(3)[1:]
    examples = [
        preference_examples_make(1)[0],
        dataclasses.replace(tie, kind="tie"),
        dataclasses.replace(both_bad, kind="both_bad"),
    ]
    progress: list[TrainingProgress] = []
    result = train(
        training_config_make(tiny_model_dir, tmp_path, method="kto", epochs=1, batch_size=2),
        examples,
        on_progress=progress.append,
    )
    # Three pairs are six unpaired rows: three steps of two.
    assert result.steps == 3 and progress[-1].total_steps == 3
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()


def test_it_refuses_ties_for_a_paired_method(tiny_model_dir: str, tmp_path: Path) -> None:
    tie = dataclasses.replace(preference_examples_make(1)[0], kind="tie")
    with pytest.raises(ValueError, match="only kto trains on ties"):
        train(training_config_make(tiny_model_dir, tmp_path, method="orpo"), [tie])


def test_it_rejects_no_examples(tiny_model_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no preference examples"):
        train(training_config_make(tiny_model_dir, tmp_path), [])


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
        ("method", "ppo"),
        ("label_smoothing", 0.6),
        ("sft_weight", -1.0),
        ("simpo_gamma", 11.0),
        ("desirable_weight", 0.0),
    ],
)
def test_it_rejects_invalid_config_values(
    tiny_model_dir: str, tmp_path: Path, field: str, value: object
) -> None:
    pattern = "adapter" if field == "init_adapter" else field
    with pytest.raises(ValueError, match=pattern):
        train(
            training_config_make(tiny_model_dir, tmp_path, **{field: value}),
            preference_examples_make(2),
        )


def test_it_rejects_a_prompt_that_does_not_end_with_a_user_turn(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    bad = PreferenceExample(
        prompt=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}),
        chosen="a",
        rejected="b",
    )
    with pytest.raises(ValueError, match="example 0"):
        train(training_config_make(tiny_model_dir, tmp_path), [bad])


def test_it_scores_held_out_pairs_before_and_after_training(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    examples = preference_examples_make(8)
    held_out = examples[6:]
    result = train(
        training_config_make(tiny_model_dir, tmp_path, epochs=4), examples[:6], validation=held_out
    )
    figures = result.validation
    assert figures is not None and figures.pairs == 2
    # Trained to prefer the short answers, the policy's margin grows on held-out pairs of the
    # same kind, and it now finds their chosen answers likelier.
    assert figures.reward_accuracy == 1.0 and figures.reward_margin > 0
    assert figures.accuracy_after == 1.0 and 0.0 <= figures.accuracy_before <= 1.0
    assert (
        train(training_config_make(tiny_model_dir, tmp_path / "none"), examples[:2]).validation
        is None
    )


class DictStore:
    """A RefLogpStore in memory that counts what it is asked."""

    def __init__(self) -> None:
        self.values: dict[str, list[tuple[float, float]]] = {}
        self.puts = 0

    def get(self, key: str, count: int) -> list[tuple[float, float] | None]:
        stored = self.values.get(key, [])
        return list(stored) if len(stored) == count else [None] * count

    def put(self, key: str, values: Mapping[int, tuple[float, float]]) -> None:
        self.values[key] = [values[i] for i in sorted(values)]
        self.puts += 1


def test_it_computes_reference_logps_once_and_reuses_them(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    store = DictStore()
    examples = preference_examples_make(4)
    first: list[TrainingProgress] = []
    one = train(
        training_config_make(tiny_model_dir, tmp_path / "1", epochs=2),
        examples,
        ref_store=store,
        on_progress=first.append,
    )
    assert one.ref_logps_reused == 0 and store.puts == 1 and one.reference_key in store.values
    stored = store.values[one.reference_key]
    assert len(stored) == 4 and all(c < 0 and r < 0 for c, r in stored)
    # Rejected answers are longer here, so less likely in total.
    assert all(c > r for c, r in stored)

    again: list[TrainingProgress] = []
    two = train(
        training_config_make(tiny_model_dir, tmp_path / "2", epochs=2),
        examples,
        ref_store=store,
        on_progress=again.append,
    )
    assert two.ref_logps_reused == 4 and store.puts == 1  # nothing computed again
    assert [p.loss for p in again] == pytest.approx([p.loss for p in first], rel=1e-4)
    # Another reference (a truncation that changes the sequences) is another key.
    other = train(
        training_config_make(tiny_model_dir, tmp_path / "3", epochs=1, max_length=40),
        examples,
        ref_store=store,
    )
    assert other.reference_key != one.reference_key and other.ref_logps_reused == 0


def test_it_reports_pace_and_memory_and_stops_when_asked(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    seen: list[TrainingProgress] = []

    def on_progress(progress: TrainingProgress) -> bool:
        seen.append(progress)
        return progress.step == 2  # e.g. the lead cancelled the run meanwhile

    result = train(
        training_config_make(tiny_model_dir, tmp_path, epochs=3),
        preference_examples_make(4),
        on_progress=on_progress,
    )
    assert [p.step for p in seen] == [1, 2] and result.stopped_at_step == 2
    assert result.steps == 2 and seen[0].total_steps == 6
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()  # kept
    first = seen[0]
    assert first.tokens_per_s is not None and first.tokens_per_s > 0
    assert first.memory_mb is not None and first.memory_mb > 10
    assert first.eta_s is not None and first.eta_s == pytest.approx(first.elapsed_s * 5)
    assert first.chosen_logp is not None and first.chosen_logp < 0


def _resumable(model_dir: str, output_dir: Path, **overrides: object) -> TrainingConfig:
    # 8 pairs, batch 2, 3 epochs: 12 steps, a checkpoint every 3.
    return training_config_make(model_dir, output_dir, **{"checkpoint_steps": 3, **overrides})


def test_it_resumes_from_its_newest_complete_checkpoint_on_the_same_course(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    examples = preference_examples_make(8)
    straight = train(_resumable(tiny_model_dir, tmp_path / "straight"), examples)
    assert straight.steps == 12 and straight.resumed_from_step is None
    assert not (tmp_path / "straight" / "checkpoints").exists()  # finished: nothing to resume

    # A first attempt stops after step 5 (as a killed worker would, minus the kill).
    output = tmp_path / "interrupted"
    first = train(_resumable(tiny_model_dir, output), examples, on_progress=lambda p: p.step >= 5)
    assert first.stopped_at_step == 5 and [p.checkpoint_step for p in first.history] == [
        None,
        None,
        None,
        3,
        3,
    ]
    checkpoint = output / "checkpoints" / "checkpoint-3"
    marker = json.loads((checkpoint / "complete.json").read_text())
    assert marker["step"] == 3
    files = {p.name for p in checkpoint.iterdir()} - {"complete.json"}
    assert set(marker["files"]) == files and "adapter_model.safetensors" in files
    assert (
        marker["files"]["optimizer.pt"]
        == hashlib.sha256((checkpoint / "optimizer.pt").read_bytes()).hexdigest()
    )
    assert "training_args.bin" not in files  # a pickle nothing reads is not kept
    assert not (output / ".staging").exists()

    second = train(_resumable(tiny_model_dir, output), examples)
    assert second.resumed_from_step == 3 and second.steps == 12
    assert [p.step for p in second.history] == list(range(4, 13))
    # Optimizer, scheduler, data order and RNG came back: the same losses, the same adapter.
    expected = {p.step: p.loss for p in straight.history}
    for point in second.history:
        assert point.loss == pytest.approx(expected[point.step], abs=1e-5), point.step
    assert second.adapter_sha256 == straight.adapter_sha256
    assert second.history[0].eta_s is not None


def test_it_passes_over_checkpoints_that_are_incomplete_or_corrupt(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    examples = preference_examples_make(8)
    config = _resumable(tiny_model_dir, tmp_path, checkpoint_steps=2)
    train(config, examples, on_progress=lambda p: p.step >= 5)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    weights = root / "checkpoint-4" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit on disk
    weights.write_bytes(bytes(data))
    # A checkpoint a kill interrupted after its rename, before its marker; and staging debris.
    (root / "checkpoint-6").mkdir()
    (root / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / ".staging" / "checkpoint-8").mkdir(parents=True)

    resumed = train(config, examples)
    assert resumed.resumed_from_step == 2
    assert resumed.checkpoints_skipped == (
        "checkpoint-6: no completion marker (interrupted while saving)",
        "checkpoint-4: adapter_model.safetensors does not match its recorded SHA-256",
    )
    assert resumed.history[0].step == 3 and resumed.steps == 12


def test_it_refuses_the_checkpoints_of_another_training(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    train(
        _resumable(tiny_model_dir, tmp_path),
        preference_examples_make(8),
        on_progress=lambda p: p.step >= 4,
    )
    with pytest.raises(ValueError, match="checkpoint of another training"):
        train(_resumable(tiny_model_dir, tmp_path, learning_rate=5e-3), preference_examples_make(8))
    with pytest.raises(ValueError, match="checkpoint of another training"):
        train(_resumable(tiny_model_dir, tmp_path), preference_examples_make(7))


def test_it_loads_an_adapter_only_when_its_hash_matches(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    first = train(
        training_config_make(tiny_model_dir, tmp_path / "one", epochs=1),
        preference_examples_make(2),
    )
    config = training_config_make(
        tiny_model_dir,
        tmp_path / "two",
        epochs=1,
        init_adapter=first.adapter_dir,
        init_adapter_sha256="0" * 64,
    )
    with pytest.raises(ValueError, match=r"not the 0{12}\.\.\. it was registered with"):
        train(config, preference_examples_make(2))
    matching = dataclasses.replace(config, init_adapter_sha256=first.adapter_sha256)
    assert train(matching, preference_examples_make(2)).steps == 1


def test_it_takes_the_reference_policy_asked_for(tiny_model_dir: str, tmp_path: Path) -> None:
    # An adapter that already prefers the chosen responses of these pairs.
    examples = preference_examples_make(4)
    previous = train(training_config_make(tiny_model_dir, tmp_path / "previous"), examples)

    store = DictStore()

    def first_loss(stored: bool = False, **overrides: object) -> float:
        # With a store, TRL precomputes the reference log-probabilities while it is built.
        seen: list[TrainingProgress] = []
        name = f"{stored}-" + "-".join(f"{k}" for k in overrides)
        train(
            training_config_make(tiny_model_dir, tmp_path / name, epochs=1, **overrides),
            examples,
            ref_store=store if stored else None,
            on_progress=seen.append,
        )
        assert seen[0].loss is not None
        return seen[0].loss

    log2 = math.log(2)
    for stored in (False, True):
        # Continuing the adapter against itself: no margin yet, loss log 2.
        continued = first_loss(stored, init_adapter=previous.adapter_dir)
        assert continued == pytest.approx(log2, abs=1e-3)
        # Continuing it against the base: the adapter's margin over the base shows at once.
        assert first_loss(stored, init_adapter=previous.adapter_dir, reference="base") < log2 - 0.02
        # A fresh adapter against the previous policy: the base is behind that reference.
        assert first_loss(stored, reference=previous.adapter_dir) > log2 + 0.02
    # One key per reference: the previous policy's (twice, as the start and as a path, the
    # same reference: its log-probabilities were reused) and the base's.
    assert len(store.values) == 2
    with pytest.raises(ValueError, match="orpo uses no reference model"):
        train(
            training_config_make(
                tiny_model_dir, tmp_path / "o", method="orpo", reference=previous.adapter_dir
            ),
            examples,
        )
    with pytest.raises(ValueError, match="registered with"):
        train(
            training_config_make(
                tiny_model_dir,
                tmp_path / "h",
                reference=previous.adapter_dir,
                reference_sha256="f" * 64,
            ),
            examples,
        )


def test_it_lists_the_training_pairs_the_trained_policy_contradicts(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    examples = preference_examples_make(8)
    flipped = {2, 5}  # labels against the rest: the long answer "won" these
    examples = [
        dataclasses.replace(e, chosen=e.rejected, rejected=e.chosen) if i in flipped else e
        for i, e in enumerate(examples)
    ]
    result = train(training_config_make(tiny_model_dir, tmp_path, epochs=4), examples)
    assert {c.index for c in result.contradictions} == flipped
    margins = [c.margin for c in result.contradictions]
    assert all(m < 0 for m in margins) and margins == sorted(margins)
    # With stored reference log-probabilities, the policy's log-probabilities come from the
    # last epoch's own forward passes (no pass after training): the same pairs stand out.
    scored_after: list[int] = []
    real = StoredRefDPOTrainer.compute_ref_log_probs

    def counted(self: Any, model: Any, inputs: Any) -> Any:
        scored_after.append(len(inputs["input_ids"]))
        return real(self, model, inputs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StoredRefDPOTrainer, "compute_ref_log_probs", counted)
        stored = train(
            training_config_make(tiny_model_dir, tmp_path / "s", epochs=4),
            examples,
            ref_store=DictStore(),
        )
    assert {c.index for c in stored.contradictions} == flipped
    assert all(c.margin < 0 for c in stored.contradictions)
    assert sum(scored_after) == 2 * len(examples)  # the reference pass only, chosen + rejected


def test_stored_reference_logps_train_as_computing_them_each_step_does_on_a_4bit_base(
    tiny_model_dir_4bit: str, tmp_path: Path
) -> None:
    """The precomputed reference must be computed as the steps compute the policy: in eval
    mode bitsandbytes' 4-bit CPU layers take another kernel, and a reference computed there
    (the model's mode when TRL precomputes) trained a run that learned far less."""
    examples = preference_examples_make(8)
    runs = [
        train(
            training_config_make(tiny_model_dir_4bit, tmp_path / str(i), quantize_4bit=True),
            examples,
            ref_store=store,
        )
        for i, store in enumerate([None, DictStore()])
    ]
    on_the_fly, stored = ([p.loss for p in run.history] for run in runs)
    assert stored == pytest.approx(on_the_fly, abs=1e-4)
