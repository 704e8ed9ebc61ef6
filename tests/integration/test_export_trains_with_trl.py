"""An export loads with `datasets.load_dataset` and trains with TRL as it is (no glue code)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User

from annotate.exports import export_write
from annotate.models import Project
from annotate.services.judgments import judgment_submit
from tests.factories import comparison_make, ratings_make

pytestmark = pytest.mark.django_db


def _pairs(project: Project, annotator: User) -> None:
    prompts = list(project.prompts.filter(split="train").order_by("id"))
    choices = ["a", "b", "tie", "both_bad", "a", "b"]
    for i, (prompt, choice) in enumerate(zip(prompts, choices, strict=False)):
        comparison = comparison_make(
            prompt, (f"Answer {i}.", f"A longer answer number {i}."), seed=i
        )
        judgment_submit(comparison_id=comparison.pk, annotator=annotator, choice=choice)
    # Two ratings: one unpaired row each in KTO's export, none in DPO's.
    for rating, label in zip(
        ratings_make(prompts[0], ["Rated well.", "Rated badly."]), ["good", "bad"], strict=True
    ):
        judgment_submit(comparison_id=rating.pk, annotator=annotator, choice=label)


@pytest.mark.parametrize("format", ["dpo", "kto"])
def test_it_trains_one_step_with_trl_on_the_export(
    format: str, project: Project, annotator: User, tiny_model_dir: str, tmp_path: Path
) -> None:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _pairs(project, annotator)
    export_write(project=project, directory=tmp_path / "export", format=format, file_type="parquet")
    # A cache of its own: datasets' cache is keyed on the path, which pytest reuses.
    dataset = datasets.load_dataset(
        str(tmp_path / "export"), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert len(dataset) == (4 if format == "dpo" else 14)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    common = {
        "output_dir": str(tmp_path / "run"),
        "max_steps": 1,
        "per_device_train_batch_size": 2,
        "max_length": 64,
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
    }
    if format == "dpo":
        trainer = trl.DPOTrainer(
            model=model,
            args=trl.DPOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    else:
        trainer = trl.KTOTrainer(
            model=model,
            args=trl.KTOConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
    result = trainer.train()
    assert result.global_step == 1
    assert result.training_loss == pytest.approx(result.training_loss)  # a number, not NaN
