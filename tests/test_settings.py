from __future__ import annotations

import os
import subprocess
import sys

from tests.factories import REPO


def _settings_probe(env: dict[str, str], expression: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"}
    }
    code = f"import django, os; os.environ['DJANGO_SETTINGS_MODULE']='config.settings'; django.setup(); from django.conf import settings as s; print({expression})"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_to_start_without_a_secret_key_when_debug_is_off() -> None:
    result = _settings_probe({"DEBUG": "0"}, "s.SECRET_KEY")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_it_defaults_to_sqlite_and_the_filesystem_broker_under_data(tmp_path) -> None:
    result = _settings_probe(
        {"DEBUG": "1", "PREFLOOP_DATA_DIR": str(tmp_path)},
        "s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME'], s.CELERY_BROKER_URL, s.CELERY_BROKER_TRANSPORT_OPTIONS['data_folder_in']",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "sqlite3" in result.stdout
        and str(tmp_path) in result.stdout
        and "filesystem://" in result.stdout
    )


def test_it_switches_to_postgresql_and_redis_from_the_environment() -> None:
    result = _settings_probe(
        {
            "DEBUG": "1",
            "DATABASE_URL": "postgres://u@db.example:5433/prefloop",
            "CELERY_BROKER_URL": "redis://r:6379/0",
        },
        "s.DATABASES['default']['ENGINE'], s.DATABASES['default']['HOST'], s.CELERY_BROKER_URL",
    )
    assert result.returncode == 0, result.stderr
    assert (
        "postgresql" in result.stdout
        and "db.example" in result.stdout
        and "redis://r:6379/0" in result.stdout
    )


def test_it_configures_celery_for_long_jobs() -> None:
    from config.celery import app

    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_routes["alignment.tasks.training_run_run"]["queue"] == "gpu"
    assert app.conf.task_routes["alignment.tasks.generation_job_run"]["queue"] == "gpu"


def test_it_runs_the_default_sqlite_in_wal_mode_with_immediate_transactions(tmp_path) -> None:
    result = _settings_probe(
        {"DEBUG": "1", "PREFLOOP_DATA_DIR": str(tmp_path)},
        "__import__('django.db').db.connection.cursor().execute('PRAGMA journal_mode').fetchone()[0], "
        "s.DATABASES['default']['OPTIONS']['transaction_mode']",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wal", "IMMEDIATE"]


def test_it_refuses_an_unknown_generation_backend() -> None:
    result = _settings_probe(
        {"DEBUG": "1", "PREFLOOP_GENERATION_BACKEND": "tgi"}, "s.GENERATION_BACKEND"
    )
    assert result.returncode != 0
    assert "PREFLOOP_GENERATION_BACKEND must be transformers or vllm, not 'tgi'" in result.stderr
    chosen = _settings_probe(
        {"DEBUG": "1", "PREFLOOP_GENERATION_BACKEND": "vllm"}, "s.GENERATION_BACKEND"
    )
    assert chosen.stdout.strip() == "vllm"
