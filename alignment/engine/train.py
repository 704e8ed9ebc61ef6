"""Command line: ``python -m alignment.engine.train CONFIG.json``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignment.engine.training import (
    PreferenceExample,
    TrainingConfig,
    TrainingProgress,
    examples_validate,
    train,
    training_config_validate,
)

EXIT_BAD_CONFIG = 2

DESCRIPTION = """\
Train a LoRA adapter (QLoRA by default) on preference pairs: DPO and its sibling losses,
KTO, ORPO or SimPO.

CONFIG.json:
  {"training": {"model": "packaged:smollm2-135m-instruct", "models_dir": "data/models",
                "output_dir": "runs/r1", "epochs": 2, ...},
   "examples": "pairs.jsonl"}

"training" holds TrainingConfig fields (model, models_dir and output_dir are required;
method (dpo, kto, orpo, simpo), loss_type (dpo: sigmoid, ipo, hinge, robust, ...), beta,
sft_weight, label_smoothing, simpo_gamma, desirable_weight, undesirable_weight,
learning_rate, epochs, batch_size, gradient_accumulation_steps, lora_r, lora_alpha,
lora_dropout, max_length, seed, quantize_4bit, init_adapter, init_adapter_sha256,
reference ("start": the policy training starts from, "base": the base model alone, or an
adapter directory), reference_sha256, checkpoint_steps, trust_remote_code are optional).
Run again with the same output_dir, settings and examples, training resumes from the newest
complete checkpoint under output_dir/checkpoints. "examples" is a JSONL file in TRL's conversational preference format, one
pair per line:
  {"prompt": [{"role": "user", "content": "..."}],
   "chosen": [{"role": "assistant", "content": "..."}],
   "rejected": [{"role": "assistant", "content": "..."}]}
prompt may also be a plain string (one user turn), chosen/rejected plain strings. An
optional "kind" of "tie" or "both_bad" marks a pair only kto trains on (both completions
desirable, or neither).
Relative paths are taken from the current directory.

Prints one progress line per step, then the result as one line of JSON.
Exit status 2 for a bad config or examples file.
"""


class ConfigError(ValueError):
    """The config or examples file is unusable; the message says why."""


def config_read(path: Path) -> tuple[TrainingConfig, Path]:
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"config {path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a JSON object")
    unknown = set(raw) - {"training", "examples"}
    if unknown:
        raise ConfigError(f"config has unknown keys: {', '.join(sorted(unknown))}")
    training = raw.get("training")
    if not isinstance(training, dict):
        raise ConfigError('config needs a "training" object')
    examples = raw.get("examples")
    if not isinstance(examples, str) or not examples:
        raise ConfigError('config needs "examples": the path of a JSONL file')
    fields = {field.name: field for field in dataclasses.fields(TrainingConfig)}
    unknown = set(training) - set(fields)
    if unknown:
        raise ConfigError(
            f"training has unknown fields: {', '.join(sorted(unknown))}; known: {', '.join(fields)}"
        )
    required = [
        name
        for name, field in fields.items()
        if field.default is dataclasses.MISSING and name not in training
    ]
    if required:
        raise ConfigError(f"training is missing required fields: {', '.join(required)}")
    for name, value in training.items():
        _field_type_check(name, value, fields[name].default)
    return TrainingConfig(**training), Path(examples)


def _field_type_check(name: str, value: Any, default: Any) -> None:
    if name in {"model", "models_dir", "output_dir", "loss_type", "method", "reference"}:
        expected: tuple[type, ...] = (str,)
    elif name in {"init_adapter", "init_adapter_sha256", "reference_sha256"}:
        expected = (str, type(None))
    elif isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    else:
        return
    # bool is an int in Python; a JSON true for an integer field is a mistake.
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
        raise ConfigError(f"training.{name} must be {names}, got {json.dumps(value)}")


def examples_read(path: Path) -> list[PreferenceExample]:
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read examples {path}: {error.strerror or error}") from error
    examples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}:{number}: not valid JSON: {error}") from error
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{number}: expected a JSON object")
        try:
            examples.append(
                PreferenceExample(
                    prompt=_prompt_parse(row.get("prompt")),
                    chosen=_response_parse(row.get("chosen"), "chosen"),
                    rejected=_response_parse(row.get("rejected"), "rejected"),
                    kind=str(row.get("kind", "preference")),
                )
            )
        except ConfigError as error:
            raise ConfigError(f"{path}:{number}: {error}") from error
    if not examples:
        raise ConfigError(f"examples file {path} has no pairs")
    return examples


def _prompt_parse(value: Any) -> tuple[dict[str, str], ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    if not isinstance(value, list) or not value:
        raise ConfigError('"prompt" must be a string or a non-empty list of messages')
    messages = tuple(_message_parse(message, "prompt") for message in value)
    if messages[-1]["role"] != "user":
        raise ConfigError('"prompt" must end with a user message')
    return messages


def _response_parse(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1:
        message = _message_parse(value[0], key)
        if message["role"] != "assistant":
            raise ConfigError(f'"{key}" must be an assistant message')
        return message["content"]
    raise ConfigError(f'"{key}" must be a string or a list of one assistant message')


def _message_parse(message: Any, key: str) -> dict[str, str]:
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("role"), str)
        or not isinstance(message.get("content"), str)
    ):
        raise ConfigError(f'each "{key}" message needs string "role" and "content"')
    return {"role": message["role"], "content": message["content"]}


def progress_line(progress: TrainingProgress) -> str:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        f"step {progress.step}/{progress.total_steps} epoch {progress.epoch:.2f} "
        f"loss {number(progress.loss, 4)} reward_accuracy {number(progress.reward_accuracy, 2)} "
        f"reward_margin {number(progress.reward_margin, 3)} elapsed {progress.elapsed_s:.1f}s "
        f"tokens/s {number(progress.tokens_per_s, 0)} memory_mb {number(progress.memory_mb, 0)} "
        f"checkpoint {progress.checkpoint_step if progress.checkpoint_step is not None else '-'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m alignment.engine.train",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", type=Path, metavar="CONFIG.json", help="training config")
    args = parser.parse_args(argv)
    try:
        config, examples_path = config_read(args.config)
        examples = examples_read(examples_path)
        # Validated before the model loads, so a bad value fails in a second.
        training_config_validate(config)
        examples_validate(examples)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    result = train(config, examples, on_progress=lambda p: print(progress_line(p), flush=True))
    summary = dataclasses.asdict(result)
    del summary["history"]  # already printed line by line
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
