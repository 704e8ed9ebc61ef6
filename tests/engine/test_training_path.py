"""What training learns from is what the annotators judged: a cut-off response is not a
finished turn, every method closes a turn once, KTO's mismatched pairs mismatch, held-out
figures are against the run's reference, and stored reference log-probabilities are keyed by
everything they depend on and reused pair by pair."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from alignment.engine import training_run
from alignment.engine.training import PreferenceExample, reference_key, train
from alignment.engine.turns import pair_ids, turn_ids
from tests.factories import preference_examples_make, training_config_make

PROMPT = ({"role": "user", "content": "Tell me about rivers."},)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _end_of_turn(tokenizer: Any) -> int:
    return int(tokenizer.convert_tokens_to_ids("<|im_end|>"))


def test_a_cut_off_response_is_laid_out_without_the_end_of_its_turn(tokenizer: Any) -> None:
    end = _end_of_turn(tokenizer)
    prompt, finished = turn_ids(tokenizer, PROMPT, "Rivers flow to the sea.")
    same_prompt, cut = turn_ids(tokenizer, PROMPT, "Rivers flow to the", complete=False)
    assert prompt == same_prompt
    assert finished.count(end) == 1 and end not in cut
    assert tokenizer.decode(cut) == "Rivers flow to the"
    head, chosen, rejected = pair_ids(
        tokenizer, PROMPT, "Short.", "Long and cut", rejected_complete=False
    )
    assert head == prompt and chosen.count(end) == 1 and end not in rejected


def _rows(config: Any, examples: list[PreferenceExample], tokenizer: Any, store: Any = None):
    return training_run._rows(config, examples, store, config.model, tokenizer, "cpu:test")


def test_dpo_rows_train_a_cut_off_response_without_closing_it(
    tiny_model_dir: str, tmp_path: Path, tokenizer: Any
) -> None:
    config = training_config_make(tiny_model_dir, tmp_path)
    cut = PreferenceExample(
        prompt=PROMPT, chosen="Rivers flow to the", rejected="Lakes.", chosen_complete=False
    )
    rows, _, _, dropped = _rows(config, [cut], tokenizer)
    end = _end_of_turn(tokenizer)
    assert dropped == 0
    assert end not in rows[0]["chosen_ids"] and rows[0]["rejected_ids"].count(end) == 1


@pytest.mark.parametrize("method", ["orpo", "simpo", "dpo"])
def test_every_paired_method_closes_a_finished_turn_once(
    tiny_model_dir: str, tmp_path: Path, tokenizer: Any, method: str
) -> None:
    """TRL's ORPO and CPO trainers add an end-of-turn token after the chat template's own."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from alignment.engine.trainers import method_trainer

    config = training_config_make(tiny_model_dir, tmp_path, method=method)
    rows, _, _, _ = _rows(config, preference_examples_make(2), tokenizer)
    trainer_class, args = method_trainer(
        config,
        training_run._trainer_arguments(config, on_cuda=False, use_bf16=False, stored=None),
    )
    trainer = trainer_class(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    end = _end_of_turn(tokenizer)
    if "chosen_labels" in row:  # ORPO, CPO: the answer is what the labels keep
        answer = [t for t in row["chosen_labels"] if t != -100]
    else:
        answer = list(row["chosen_ids"])
    assert answer.count(end) == 1
    assert tokenizer.decode(answer).rstrip() == "Number 0 is fine.<|im_end|>"


def test_kto_pairs_each_row_with_another_prompts_answer_and_reshuffles_each_epoch(
    tiny_model_dir: str, tmp_path: Path, tokenizer: Any
) -> None:
    examples = preference_examples_make(12)
    config = training_config_make(tiny_model_dir, tmp_path, method="kto", epochs=2, batch_size=4)
    rows, _, _, _ = _rows(config, examples, tokenizer)
    assert len(rows) == 2 * 2 * 12  # two rows a pair, every epoch
    first, second = rows[:24], rows[24:]
    key = [(tuple(r["prompt_ids"]), tuple(r["completion_ids"])) for r in first]
    assert sorted(key) == sorted(
        (tuple(r["prompt_ids"]), tuple(r["completion_ids"])) for r in second
    )
    assert key != [(tuple(r["prompt_ids"]), tuple(r["completion_ids"])) for r in second]
    # TRL's KL pair of a row is the row before it in its batch (the first: the batch's last).
    same = total = 0
    for start in range(0, len(rows), config.batch_size):
        batch = rows[start : start + config.batch_size]
        for i, row in enumerate(batch):
            total += 1
            same += row["prompt_ids"] == batch[i - 1]["prompt_ids"]
    assert same / total < 0.25  # adjacent pair rows made it 1/2


def test_held_out_reward_accuracy_is_measured_against_the_runs_reference(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    examples = preference_examples_make(8)
    # An adapter that already prefers the short answers.
    previous = train(training_config_make(tiny_model_dir, tmp_path / "p", epochs=4), examples[:6])
    # Continued against the base with a step too small to move it: the policy still holds
    # its margin over the base on the held-out pairs, though it barely moved from its start.
    result = train(
        training_config_make(
            tiny_model_dir,
            tmp_path / "c",
            epochs=1,
            learning_rate=1e-9,
            init_adapter=previous.adapter_dir,
            reference="base",
        ),
        examples[:6],
        validation=examples[6:],
    )
    assert result.validation is not None
    assert result.validation.reward_accuracy == 1.0 and result.validation.reward_margin > 0.01


class PairStore:
    """A RefLogpStore in memory, pair by pair, that counts what it stores."""

    def __init__(self) -> None:
        self.values: dict[str, dict[int, tuple[float, float]]] = {}
        self.stored = 0

    def get(self, key: str, count: int) -> list[tuple[float, float] | None]:
        found = self.values.get(key, {})
        return [found.get(i) for i in range(count)]

    def put(self, key: str, values: Mapping[int, tuple[float, float]]) -> None:
        new = {i: v for i, v in values.items() if i not in self.values.get(key, {})}
        self.values.setdefault(key, {}).update(new)
        self.stored += len(new)


def test_a_pair_left_out_for_length_does_not_make_the_rest_miss_the_store(
    tiny_model_dir: str, tmp_path: Path
) -> None:
    long_prompt = PreferenceExample(
        prompt=({"role": "user", "content": "word " * 200},), chosen="a", rejected="b"
    )
    examples = [*preference_examples_make(4), long_prompt]
    store = PairStore()
    first = train(training_config_make(tiny_model_dir, tmp_path / "1"), examples, ref_store=store)
    assert first.examples_dropped == 1 and store.stored == 4
    again = train(training_config_make(tiny_model_dir, tmp_path / "2"), examples, ref_store=store)
    assert again.ref_logps_reused == 4 and store.stored == 4
    # Two new pairs beside the stored ones: only those two are computed.
    more = [*examples, *preference_examples_make(6)[4:]]
    grown = train(training_config_make(tiny_model_dir, tmp_path / "3"), more, ref_store=store)
    assert grown.ref_logps_reused == 4 and store.stored == 6


def test_the_reference_key_changes_with_weights_compute_and_library_versions(
    tiny_model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from alignment.engine import training

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = training_config_make(str(model), tmp_path)
    key = reference_key(config, str(model), "t", compute="cpu:AVX512:float32")
    assert key == reference_key(config, str(model), "t", compute="cpu:AVX512:float32")
    assert key != reference_key(config, str(model), "t", compute="cpu:AVX512:bfloat16")
    assert key != reference_key(config, str(model), "t", compute="cpu:AVX2:float32")
    # The same file name and size, other contents.
    weights = next(model.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    changed = reference_key(config, str(model), "t", compute="cpu:AVX512:float32")
    assert changed != key
    monkeypatch.setattr(training, "_version", lambda name: "9.9" if name == "torch" else "1")
    assert reference_key(config, str(model), "t", compute="cpu:AVX512:float32") != changed
