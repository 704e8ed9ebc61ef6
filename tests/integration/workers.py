"""Real Celery workers for the integration tests: started as `make demo` and the compose file
start them (a subprocess on the test database), stopped, killed, waited on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TypeVar

from django.db import connection

from core.models import Job, JobStatus
from tests.factories import MODELS_DIR, REPO

J = TypeVar("J", bound=Job)


def worker_start(tmp_path: Path, name: str, **env_overrides: str) -> subprocess.Popen[bytes]:
    db = connection.settings_dict
    env = {
        **os.environ,
        "DEBUG": "1",
        # The worker must see the test database, which pytest-django created and named.
        "DATABASE_URL": f"postgres://{db['USER'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "PREFLOOP_DATA_DIR": str(tmp_path / "worker-data"),
        "PREFLOOP_MODELS_DIR": str(MODELS_DIR),
        "PREFLOOP_QUANTIZE_4BIT": "0",
        **env_overrides,
    }
    log = (tmp_path / f"{name}.log").open("wb")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            "default,gpu",
            "--pool",
            "solo",
            "-n",
            f"test-{uuid.uuid4().hex[:8]}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def worker_stop(process: subprocess.Popen[bytes], tmp_path: Path, name: str) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    print(f"== {name}\n" + (tmp_path / f"{name}.log").read_text()[-4000:])


def wait_for(model: type[J], pk: int, worker: subprocess.Popen[bytes], timeout: float = 180) -> J:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = model.objects.get(pk=pk)
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            assert job.status == JobStatus.SUCCEEDED, job.error
            return job
        assert worker.poll() is None, "the worker died"
        time.sleep(0.5)
    raise AssertionError(
        f"{model.__name__} {pk} still {model.objects.get(pk=pk).status} after {timeout} s"
    )
