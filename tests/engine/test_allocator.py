"""The allocator tuning holds freed memory while a tensor workload runs and nowhere else: each
check runs in a fresh process, since malloc's settings are the process's."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.engine.allocator import malloc_tuned_for_tensors

REPO_ROOT = Path(__file__).resolve().parents[2]

# Prints the RSS (MB) a process holds after it allocated, touched and freed 256 MB: in a
# fresh process, inside the tuned block, and after it.
PROBE = """
import json, os, sys
sys.path.insert(0, {root!r})
from alignment.engine.memory import rss_mb

def held_after_free():
    base = rss_mb()
    block = b"\\x01" * (256 * 2**20)
    del block
    return rss_mb() - base

figures = {{}}
{setup}
figures["fresh"] = held_after_free()
from alignment.engine.allocator import malloc_tuned_for_tensors
with malloc_tuned_for_tensors() as tuned:
    figures["tuned"] = tuned
    figures["inside"] = held_after_free()
figures["after"] = held_after_free()
print(json.dumps(figures))
"""


def probe(setup: str = "") -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(root=str(REPO_ROOT), setup=setup)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "DEBUG": "1"},
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="needs glibc")
def test_freed_memory_is_kept_inside_the_block_only() -> None:
    figures = probe()
    assert figures["tuned"] is True
    assert figures["fresh"] < 32  # glibc unmaps a freed 256 MB block at once
    assert figures["inside"] > 200  # kept for the next tensor
    assert figures["after"] < 32  # defaults restored: nothing of the tuning stays


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="needs glibc")
def test_the_web_process_frees_memory_as_glibc_does() -> None:
    # The web process loads every app, the engine modules its views import included.
    figures = probe(
        "import django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings'); "
        "django.setup(); import config.urls, config.wsgi\n"
        "figures['web'] = held_after_free()"
    )
    assert figures["web"] < 32


def test_it_passes_the_blocks_error_through() -> None:
    with pytest.raises(RuntimeError, match="boom"), malloc_tuned_for_tensors():
        raise RuntimeError("boom")
