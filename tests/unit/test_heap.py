"""settle_heap: what start-up allocated leaves the collector's sight, and the youngest generation waits longer."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from libs.common.config import CommonSettings
from libs.common.heap import settle_heap

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_the_threshold_applied() -> None:
    gc.unfreeze()
    older = gc.get_threshold()[1:]
    settle_heap(CommonSettings(gc_gen0_threshold=12345))
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (12345, *older)


@pytest.mark.usefixtures("restored_gc")
def test_zero_leaves_cpythons_collector_as_it_is() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    settle_heap(CommonSettings(gc_gen0_threshold=0))
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


_HASHING = """
import os, sys, threading
from argon2 import PasswordHasher
from libs.common.heap import map_large_blocks
from libs.devstack.procfs import rss_bytes

map_large_blocks()
hasher = PasswordHasher(time_cost=1, memory_cost=19456, parallelism=1)  # the service's 19 MiB
hasher.hash("warm-up")
before = rss_bytes(os.getpid())
for _ in range(3):
    threads = [threading.Thread(target=lambda: [hasher.hash("password") for _ in range(3)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
print(rss_bytes(os.getpid()) - before)
"""


def test_password_hashes_in_threads_give_their_memory_back() -> None:
    # In a process of its own: the setting is the whole process's. Without it glibc kept about 95 MiB here
    # (a 19 MiB buffer in each thread's arena, and more), which bench/soak.py saw as the auth service growing.
    done = subprocess.run(
        [sys.executable, "-c", _HASHING], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    assert int(done.stdout) < 8 * 2**20
