"""Pools of worker processes that never outlive the process that started them."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _start(parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]) -> None:
    """The start of each pool process: its own initializer, and an end when its parent ends, however it ends.

    A parent killed with SIGKILL gets no chance to stop its pool, and a pool process waiting for work would wait for
    ever (it holds its queue's pipe open itself), keeping multiprocessing's resource tracker alive too: so each one
    watches for its parent to be gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def process_pool(
    processes: int, *, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """`processes` spawned processes (never forked: a child must not inherit its parent's event loop, threads or
    connections) that end with this one."""
    return ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start,
        initargs=(os.getpid(), initializer, initargs),
    )
