from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alignment.engine.train", *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pairs_write(path: Path) -> Path:
    rows = [
        {
            "prompt": [{"role": "user", "content": "Greet me."}],
            "chosen": [{"role": "assistant", "content": "Hi."}],
            "rejected": [{"role": "assistant", "content": "Hello, hello, hello, my friend!"}],
        },
        {"prompt": "Count to two.", "chosen": "1, 2.", "rejected": "One, and then two."},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _config_write(path: Path, training: dict[str, object], examples: Path) -> Path:
    path.write_text(json.dumps({"training": training, "examples": str(examples)}))
    return path


def test_it_trains_from_a_config_file(tiny_model_dir: str, tmp_path: Path) -> None:
    training = {
        "model": tiny_model_dir,
        "models_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "run"),
        "quantize_4bit": False,
        "epochs": 2,
        "batch_size": 2,
        "lora_r": 4,
        "lora_alpha": 8,
        "max_length": 64,
    }
    config = _config_write(tmp_path / "config.json", training, _pairs_write(tmp_path / "p.jsonl"))
    completed = _run(str(config))
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/2", "2/2"]
    assert "loss" in steps[0] and "reward_accuracy" in steps[0]
    result = json.loads(lines[-1])
    assert result["steps"] == 2
    assert result["adapter_dir"] == str(tmp_path / "run" / "adapter")
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"models_dir": "m", "output_dir": "o"}, "missing required fields: model"),
        ({"model": "m", "models_dir": "m", "output_dir": "o", "epoch": 2}, "unknown fields: epoch"),
        ({"model": "m", "models_dir": "m", "output_dir": "o", "epochs": "2"}, "epochs must be int"),
        ({"model": "m", "models_dir": "m", "output_dir": "o", "loss_type": "x"}, "loss_type"),
    ],
)
def test_it_exits_2_for_a_bad_config(
    tmp_path: Path, training: dict[str, object], message: str
) -> None:
    config = _config_write(tmp_path / "c.json", training, _pairs_write(tmp_path / "p.jsonl"))
    completed = _run(str(config))
    assert completed.returncode == 2
    assert message in completed.stderr
    assert completed.stdout == ""


def test_it_exits_2_for_a_bad_examples_line(tmp_path: Path) -> None:
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi"}\n')
    training = {"model": "m", "models_dir": "m", "output_dir": "o"}
    completed = _run(str(_config_write(tmp_path / "c.json", training, pairs)))
    assert completed.returncode == 2
    assert "p.jsonl:2" in completed.stderr and "chosen" in completed.stderr


def test_it_exits_2_for_a_missing_config(tmp_path: Path) -> None:
    completed = _run(str(tmp_path / "nope.json"))
    assert completed.returncode == 2
    assert "cannot read config" in completed.stderr


def test_it_explains_the_config_format_in_help() -> None:
    completed = _run("--help")
    assert completed.returncode == 0
    assert "CONFIG.json" in completed.stdout and '"examples"' in completed.stdout
