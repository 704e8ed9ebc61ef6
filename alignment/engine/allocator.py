"""Process memory allocator settings for the engine's CPU workloads."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Iterator

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_INT_MAX = 2**31 - 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


@contextlib.contextmanager
def malloc_tuned_for_tensors() -> Iterator[None]:
    """Keep freed memory for reuse while the block runs; hand it back to the OS after.

    See malloc_keep_freed_memory. Giving the memory back at the end keeps an idle
    worker small and stops one job's leftover heap from adding to the next one's peak.
    """
    malloc_keep_freed_memory()
    try:
        yield
    finally:
        gc.collect()  # models and trainers sit in reference cycles
        malloc_release_freed_memory()


def malloc_release_freed_memory() -> None:
    """Return the heap's free memory to the OS (glibc malloc_trim); no-op without glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def malloc_keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    A training step or a decoding step allocates and frees tensors of hundreds of MB
    (logits over a 49k vocabulary, a growing KV cache). By default glibc serves each with
    a fresh mmap and unmaps it on free, so every step page-faults its memory in again;
    on a 2-core VM a QLoRA DPO step took 8-66 s that way against 5.2 s with this
    (bench/engine_training.py). The cost: the process holds on to its peak heap until
    malloc_release_freed_memory. Process-wide and idempotent; returns False where there
    is no glibc (nothing changes then).
    """
    libc = _libc()
    if libc is None:
        return False
    return all(
        libc.mallopt(parameter, value) == 1
        for parameter, value in (
            (_M_MMAP_THRESHOLD, _INT_MAX),  # big blocks from the heap, not one mmap each
            (_M_TRIM_THRESHOLD, _INT_MAX),  # never shrink the heap top
            (_M_TOP_PAD, 1 << 30),  # grow the heap in 1 GiB steps
        )
    )
