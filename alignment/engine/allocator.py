"""Process memory allocator settings for the engine's CPU workloads."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import sys
import threading
from collections.abc import Iterator

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_INT_MAX = 2**31 - 1

# While a tensor workload runs: big blocks from the heap, not one mmap each; never shrink
# the heap top; grow the heap in 1 GiB steps.
_KEEP = ((_M_MMAP_THRESHOLD, _INT_MAX), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 1 << 30))
# glibc's own defaults (mallopt(3)): blocks from 128 KiB are mmapped and unmapped on free,
# and a free top of the heap over 128 KiB goes back to the OS.
_DEFAULTS = ((_M_MMAP_THRESHOLD, 128 * 1024), (_M_TRIM_THRESHOLD, 128 * 1024), (_M_TOP_PAD, 0))

_lock = threading.Lock()
_depth = 0  # blocks running malloc_tuned_for_tensors (a generation inside a job, say)


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


def _mallopt(settings: tuple[tuple[int, int], ...]) -> bool:
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


@contextlib.contextmanager
def malloc_tuned_for_tensors() -> Iterator[bool]:
    """Keep freed memory for reuse while the block runs; after it, hand the heap's free
    memory back to the OS and restore glibc's defaults, so nothing of it stays with the
    process (a web process or an idle worker is as it would be without it).

    A training step or a decoding step allocates and frees tensors of hundreds of MB
    (activations, a growing KV cache). By default glibc serves each with a fresh mmap and
    unmaps it on free, so every step page-faults its memory in again: on a 2-core VM a
    QLoRA DPO run of 8 steps took 104 s that way against 88 s kept, and peaked higher
    (2.26 against 2.05 GB; bench/train_vs_trl.py, docs/benchmarks.md). At the end, the
    CUDA cache is released too where torch uses a GPU. The block yields
    False where there is no glibc (nothing changes then). Nested blocks restore at the
    outermost one's end.
    """
    global _depth
    with _lock:
        _depth += 1
        tuned = _mallopt(_KEEP)
    try:
        yield tuned
    finally:
        gc.collect()  # models and trainers sit in reference cycles
        with _lock:
            _depth -= 1
            if _depth == 0:
                _mallopt(_DEFAULTS)
                malloc_release_freed_memory()
                _cuda_cache_release()


def _cuda_cache_release() -> None:
    """Hand the CUDA caching allocator's free blocks back to the driver after a job, so the
    next job (or a vLLM engine beside it) starts from what is really in use."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def malloc_release_freed_memory() -> None:
    """Return the heap's free memory to the OS (glibc malloc_trim); no-op without glibc."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
