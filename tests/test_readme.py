"""Every command the README shows works as written in a checkout after `make install` (which
`make demo` and `make test` run): here, each one's --help, with no DEBUG or SECRET_KEY in the
environment, as in a fresh shell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MANAGE_COMMANDS = sorted(set(re.findall(r"manage\.py ([a-z_]+)", README)))
MAKE_TARGETS = sorted(set(re.findall(r"(?m)^make ([a-z-]+)", README)))


def _fresh_shell_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY"}}


def test_the_readme_shows_commands() -> None:
    assert {"loop_check", "data_import", "pairs_export"} <= set(MANAGE_COMMANDS)
    assert {"demo", "test"} <= set(MAKE_TARGETS)


@pytest.mark.parametrize("command", MANAGE_COMMANDS)
def test_each_manage_command_of_the_readme_runs_as_written(command: str) -> None:
    assert (ROOT / ".env").is_file(), "make install writes .env with the development defaults"
    result = subprocess.run(
        [sys.executable, "manage.py", command, "--help"],
        cwd=ROOT,
        env=_fresh_shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: manage.py " + command in result.stdout


def test_the_engine_command_of_the_readme_runs_as_written() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alignment.engine.train", "--help"],
        cwd=ROOT,
        env=_fresh_shell_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "config" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("target", MAKE_TARGETS)
def test_each_make_target_of_the_readme_exists(target: str) -> None:
    result = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
