from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from alignment.engine import sources
from alignment.engine.sources import (
    COMPLETION_MARKER,
    PACKAGED_SMOLLM2,
    model_load,
    model_path_resolve,
    tokenizer_load,
)


def test_it_returns_a_hub_id_unchanged(tmp_path: Path) -> None:
    assert model_path_resolve(source="HuggingFaceTB/SmolLM2-135M", models_dir=tmp_path) == (
        "HuggingFaceTB/SmolLM2-135M"
    )


def test_it_returns_a_local_directory_as_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_path_resolve(source="my-model", models_dir=tmp_path) == str(
        (tmp_path / "my-model").resolve()
    )


def test_it_rejects_a_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        model_path_resolve(source=str(tmp_path / "nope"), models_dir=tmp_path)


def test_it_names_the_known_packaged_models_for_an_unknown_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        model_path_resolve(source="packaged:gpt-7", models_dir=tmp_path)


def test_it_reuses_a_finished_conversion_without_converting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = tmp_path / "smollm2-135m-instruct"
    done.mkdir()
    (done / COMPLETION_MARKER).write_text("done")

    def fail(*args: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(sources, "_gguf_to_safetensors", fail)
    assert model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=tmp_path) == str(done.resolve())


def test_it_converts_once_when_called_concurrently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def fake_convert(packaged: object, out_dir: Path) -> None:
        calls.append(out_dir)
        time.sleep(0.3)  # long enough for the other callers to queue on the lock
        (out_dir / "model.safetensors").write_text("weights")

    monkeypatch.setattr(sources, "_gguf_to_safetensors", fake_convert)
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=tmp_path)
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = tmp_path / "smollm2-135m-instruct"
    assert len(calls) == 1
    assert results == [str(target.resolve())] * 3
    assert (target / "model.safetensors").read_text() == "weights"
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_it_leaves_no_directory_behind_when_conversion_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(packaged: object, out_dir: Path) -> None:
        (out_dir / "half-written").write_text("x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sources, "_gguf_to_safetensors", broken)
    with pytest.raises(RuntimeError):
        model_path_resolve(source=PACKAGED_SMOLLM2, models_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".smollm2-135m-instruct.lock"]


def test_it_converts_the_packaged_model_to_safetensors_with_a_chat_template(
    smollm2_path: str,
) -> None:
    path = Path(smollm2_path)
    assert (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin"))
    tokenizer = tokenizer_load(smollm2_path)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.padding_side == "left"


def test_it_loads_a_model_in_4bit(tiny_model_dir: str) -> None:
    model = model_load(tiny_model_dir, quantize_4bit=True)
    assert model.is_loaded_in_4bit
    assert model.config.quantization_config.bnb_4bit_quant_type == "nf4"
