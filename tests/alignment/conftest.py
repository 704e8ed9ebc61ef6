from __future__ import annotations

from pathlib import Path

import pytest

from annotate.models import Project


@pytest.fixture
def tiny_project(project: Project, tiny_model_dir: str, settings, tmp_path: Path) -> Project:
    """The project on the tiny random model, full precision, artifacts under tmp_path."""
    settings.ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.TRAINING_QUANTIZE_4BIT = False
    project.base_model = str(tiny_model_dir)
    project.save(update_fields=["base_model"])
    return project
