from __future__ import annotations

import ctypes.util

import pytest

from alignment.engine.allocator import malloc_keep_freed_memory, malloc_tuned_for_tensors


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="needs glibc")
def test_it_tunes_glibc_malloc_and_runs_the_block() -> None:
    ran = []
    with malloc_tuned_for_tensors():
        ran.append(True)
    assert ran == [True]
    assert malloc_keep_freed_memory() is True


def test_it_passes_the_blocks_error_through() -> None:
    with pytest.raises(RuntimeError, match="boom"), malloc_tuned_for_tensors():
        raise RuntimeError("boom")
