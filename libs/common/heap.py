"""The garbage collector of a long-running process, set once it has started.

A request allocates thousands of short-lived objects (ASGI scopes, protobuf messages, pydantic models); with
CPython's default threshold of 700 the youngest generation is collected several times per request and the
oldest one, which walks every module, class and cached plan loaded at start, every few hundred. Once the
process has started, what it loaded is moved out of the collector's sight (`gc.freeze`) and the youngest
generation is collected every GC_GEN0_THRESHOLD allocations. bench/read_path.py measures the effect.

`map_large_blocks` is for a process that allocates big short-lived buffers from several threads, as argon2 does
(19 MiB per password hash, in the default executor's threads): glibc raises its mmap threshold to the size of the
first such buffer freed, after which each thread's arena keeps one, and the resident size steps up by 19 MiB per
thread that ever hashed (bench/soak.py saw the auth service grow 12% after warm-up that way). A fixed threshold
maps every such buffer and gives it back when freed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

from libs.common.config import CommonSettings

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def settle_heap(settings: CommonSettings) -> None:
    """Freezes what start-up allocated and applies GC_GEN0_THRESHOLD (0: CPython's defaults)."""
    if settings.gc_gen0_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(settings.gc_gen0_threshold, older, oldest)


def map_large_blocks(threshold_bytes: int = 1 << 20) -> None:
    """Allocations of `threshold_bytes` and more mapped on their own and returned to the system when freed (glibc;
    elsewhere a no-op). Setting the threshold also stops glibc from raising it by itself."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, threshold_bytes)
