"""The scan step: the per-file steps (inventory, complexity, secrets) over every file of the tree, in one pass.

How it stays fast: the tree is walked once, then every file is read once and handed, while its bytes are in
memory, to each per-file step that wants it. They run on chunks of files: with a process `pool`, on all its
processes at once (largest files first, so no process is left with a long tail); without one, in the calling
thread. The steps after it (hotspots, dependencies, findings) work on the merged results.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from libs.common.processes import process_pool
from services.analysis.engine.cache import CACHE_FILE, ParseCache
from services.analysis.engine.complexity import (
    SUPPORTED_LANGUAGES,
    ComplexityResult,
    FunctionMetrics,
    grammar_for,
    measure_into,
)
from services.analysis.engine.hotspots import FUNCTIONS_PER_HOTSPOT, hotspot_order
from services.analysis.engine.inventory import (
    Cancelled,
    Count,
    FileStats,
    count_lines,
    examine,
    read,
    summarise,
    walk,
)
from services.analysis.engine.languages import Language
from services.analysis.engine.secrets import SecretFinding, SecretScan, scan_file

if TYPE_CHECKING:
    from services.analysis.engine.context import Context

TOP_FUNCTIONS = 100
CHUNK_BYTES = 1_000_000  # a chunk is one task: small enough that a cancellation never waits long
CHUNK_FILES = 250
EARLY_BYTES = 16_384  # on a pool, files this large are handed out while the walk goes on
MAX_FILE_BYTES = 2_000_000  # what the inventory counts; complexity and secrets stop at half of it
STEP_MAX_FILE_BYTES = 1_000_000

# One file to read: path relative to the root, its inventory language (None: not counted, or known only from a
# shebang once read), its size, whether the inventory counts it, whether secrets are looked for in it.
Item = tuple[str, Language | None, int, bool, bool]


@dataclass
class Scanned:
    """What the per-file steps found in some files; parts from several chunks merge into one.

    Of the functions, a part keeps only those the report can use once `keep_for_report` has run: memory then
    grows with the files of a repository, not with its functions (the whole Linux kernel has over half a
    million). The count, the sum of cyclomatic complexity and each file's total are kept instead."""

    counted: list[FileStats] = field(default_factory=list)
    inventory_skipped: dict[str, int] = field(default_factory=dict)
    measured: ComplexityResult = field(default_factory=ComplexityResult)
    functions: int = 0
    cyclomatic: int = 0
    file_complexity: dict[str, int] = field(default_factory=dict)
    reused: int = 0  # files whose measures came from the cache
    secrets: list[SecretFinding] = field(default_factory=list)
    secrets_scanned: int = 0
    secrets_skipped: dict[str, int] = field(default_factory=dict)

    def merge(self, other: Scanned) -> None:
        self.counted += other.counted
        _add(self.inventory_skipped, other.inventory_skipped)
        self.measured.functions += other.measured.functions
        self.measured.files_parsed += other.measured.files_parsed
        _add(self.measured.skipped, other.measured.skipped)
        self.functions += other.functions
        self.cyclomatic += other.cyclomatic
        self.file_complexity.update(other.file_complexity)
        self.reused += other.reused
        self.secrets += other.secrets
        self.secrets_scanned += other.secrets_scanned
        _add(self.secrets_skipped, other.secrets_skipped)

    def keep_for_report(self, complexity_limit: int) -> None:
        """Counts this part's functions, then keeps of them only: the `TOP_FUNCTIONS` most complex, those above
        `complexity_limit` (each is a finding), and each file's `FUNCTIONS_PER_HOTSPOT` most complex (a file may
        be a hotspot). Each selection is what the report would take from all functions, in the same order."""
        functions = self.measured.functions
        self.functions += len(functions)
        self.cyclomatic += sum(f.cyclomatic for f in functions)
        by_file: dict[str, list[int]] = {}
        for index, function in enumerate(functions):
            by_file.setdefault(function.path, []).append(index)
        keep = {index for index, function in enumerate(functions) if function.cyclomatic > complexity_limit}
        keep.update(heapq.nsmallest(TOP_FUNCTIONS, range(len(functions)), key=lambda i: _ranking(functions[i])))
        for path, indices in by_file.items():
            self.file_complexity[path] = sum(functions[i].cyclomatic for i in indices)
            keep.update(heapq.nsmallest(FUNCTIONS_PER_HOTSPOT, indices, key=lambda i: hotspot_order(functions[i])))
        self.measured.functions = [functions[i] for i in sorted(keep)]


def _ranking(function: FunctionMetrics) -> tuple[int, str, int]:
    """The report's order of functions: most complex first."""
    return -function.cyclomatic, function.path, function.start_line


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for key, count in more.items():
        total[key] = total.get(key, 0) + count


def scan_files(
    root: str,
    items: list[Item],
    complexity_limit: int,
    should_stop: Callable[[], bool] = lambda: False,
    *,
    cache_path: str | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    step_max_file_bytes: int = STEP_MAX_FILE_BYTES,
) -> Scanned:
    """Reads each file once and runs every per-file step that wants it; of the functions, keeps those the report
    can use (`Scanned.keep_for_report`). With a `cache_path`, what a parse gives comes from the cache when the same
    bytes were measured before, and goes into it otherwise. A pool task, so module-level."""
    part = Scanned()
    cache = _cache(cache_path)
    for rel, language, size, counted, secrets in items:
        if should_stop():
            raise Cancelled
        data = read(os.path.join(root, rel), max_file_bytes, size)
        if counted:
            stats = examine(rel, data, language, size, max_file_bytes, _counter(part, rel, cache, step_max_file_bytes))
            if isinstance(stats, str):
                part.inventory_skipped[stats] = part.inventory_skipped.get(stats, 0) + 1
            else:
                part.counted.append(stats)
        if secrets:
            found = scan_file(rel, data, part.secrets_skipped, step_max_file_bytes)
            if found is not None:
                part.secrets_scanned += 1
                part.secrets += found
    if cache is not None:
        cache.flush()
    part.keep_for_report(complexity_limit)
    return part


_CACHES: dict[str, ParseCache] = {}  # this process's connections, by file


def _cache(path: str | None) -> ParseCache | None:
    if not path:
        return None
    cache = _CACHES.get(path)
    if cache is None:
        cache = _CACHES[path] = ParseCache(path)
    return cache


def _counter(part: Scanned, rel: str, cache: ParseCache | None, max_file_bytes: int) -> Count:
    """Counts a file's lines for the inventory: a file in a language with a grammar is measured on the way (or
    found in the cache), and its lines are counted from that parse."""
    measured = part.measured

    def count(data: bytes, language: Language) -> tuple[int, int, int]:
        if language.name not in SUPPORTED_LANGUAGES:
            return count_lines(data, language)
        grammar = grammar_for(rel, language.name)
        key = None
        if cache is not None and grammar is not None and len(data) <= max_file_bytes:
            key = cache.key(data, grammar)
            hit = cache.get(key, rel)
            if hit is not None:
                measured.functions.extend(hit[1])
                measured.files_parsed += 1
                part.reused += 1
                return hit[0]
        before = len(measured.functions)
        lines = measure_into(measured, rel, data, language.name, max_file_bytes)
        if lines is None:
            return count_lines(data, language)
        if cache is not None and key is not None:
            cache.put(key, (lines, measured.functions[before:]))
        return lines

    return count


def warm_up() -> None:
    """Loads every grammar and query in this process, so that a pool's first analysis does not pay for it."""
    for language in sorted(SUPPORTED_LANGUAGES):
        measure_into(ComplexityResult(), "warm.tsx" if language == "TypeScript" else "warm", b"", language)


def _pid_after(delay_s: float) -> int:
    time.sleep(delay_s)
    return os.getpid()


def start_pool(processes: int, *, timeout_s: float = 60.0) -> ProcessPoolExecutor:
    """A pool of `processes` (libs/common/processes.py: spawned, ending with their worker) and warm: returns once every
    process has started and loaded the grammars."""
    pool = process_pool(processes, initializer=warm_up)
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while len(seen) < processes:
        if time.monotonic() > deadline:
            pool.shutdown(wait=False, cancel_futures=True)
            raise TimeoutError(f"{processes - len(seen)} engine processes did not start in {timeout_s} s")
        seen.update(f.result(timeout=timeout_s) for f in [pool.submit(_pid_after, 0.05) for _ in range(processes)])
    return pool


def plan(
    src: Path,
    should_stop: Callable[[], bool],
    inventory_skipped: dict[str, int],
    early: Callable[[list[Item]], None] | None = None,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> tuple[list[Item], list[str]]:
    """Every file to read, largest first, and every regular file's path in order (for the dependencies step).

    One walk gives both: the files the inventory counts, and the others it reaches, which secrets and manifests
    may hide in (`.env`, `go.mod`); folders the inventory leaves out (dependencies, caches, build output, version
    control) are left out for every step. With `early`, the files of `EARLY_BYTES` or more go to it in chunks as
    the walk finds them, so that a pool starts on the longest work while the walk goes on; they are not in the
    items returned, which are the smaller files, largest first, to even out the end."""
    items: list[Item] = []
    paths: list[str] = []
    batch: list[Item] = []
    batch_bytes = 0

    def found(rel: str, language: Language | None, size: int, counted: bool) -> None:
        nonlocal batch, batch_bytes
        paths.append(rel)
        if early is None or size < EARLY_BYTES:
            items.append((rel, language, size, counted, True))
            return
        batch.append((rel, language, size, counted, True))
        batch_bytes += size
        if len(batch) >= CHUNK_FILES or batch_bytes >= CHUNK_BYTES:
            early(batch)
            batch, batch_bytes = [], 0

    walk(os.fspath(src), should_stop=should_stop, skipped=inventory_skipped, max_file_bytes=max_file_bytes, found=found)
    if batch and early is not None:
        early(batch)
    paths.sort()
    items.sort(key=lambda item: -item[2])
    return items, paths


def chunks(items: list[Item]) -> Iterator[list[Item]]:
    """Consecutive runs of at most CHUNK_FILES files and about CHUNK_BYTES bytes."""
    chunk: list[Item] = []
    size = 0
    for item in items:
        chunk.append(item)
        size += item[2]
        if len(chunk) >= CHUNK_FILES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def scan_tree(
    src: Path,
    complexity_limit: int,
    pool: Executor | None,
    should_stop: Callable[[], bool],
    advance: Callable[[float], None],
    cache_path: str | None,
    inventory_skipped: dict[str, int],
) -> tuple[Scanned, list[str]]:
    """The per-file steps on every file of the tree (`plan`), and every regular file's path."""
    total = Scanned()
    root = os.fspath(src)
    if pool is None:
        items, paths = plan(src, should_stop, inventory_skipped)
        parts = list(chunks(items))
        for done, part in enumerate(parts):
            advance(done / max(len(parts), 1))
            total.merge(scan_files(root, part, complexity_limit, should_stop, cache_path=cache_path))
        return total, paths
    futures: list[Future[Scanned]] = []

    def submit(part: list[Item]) -> None:
        futures.append(pool.submit(scan_files, root, part, complexity_limit, cache_path=cache_path))

    # Running chunks are abandoned on cancellation, not awaited; the merge below keeps the order of submission.
    try:
        items, paths = plan(src, should_stop, inventory_skipped, early=submit)
        for part in chunks(items):
            submit(part)
        pending: set[Future[Scanned]] = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            if should_stop():
                raise Cancelled()
            advance((len(futures) - len(pending)) / max(len(futures), 1))
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    for future in futures:
        total.merge(future.result())
    return total, paths


def step(ctx: Context) -> None:
    """Inventory, complexity and secrets of the checkout: one read of each file, on the worker's engine processes.
    With `engine_cache_dir`, files measured by an earlier analysis are not parsed again (`engine/cache.py`); the
    cache is then trimmed to `engine_cache_max_entries`."""
    settings = ctx.settings
    inventory_skipped: dict[str, int] = {}
    cache = ParseCache(os.path.join(settings.engine_cache_dir, CACHE_FILE)) if settings.engine_cache_dir else None
    cache_path = cache.path if cache is not None and cache.prepare() else None
    try:
        scanned, ctx.paths = scan_tree(
            ctx.checkout,
            ctx.gate.max_function_complexity,
            ctx.pool,
            ctx.should_stop,
            ctx.advance,
            cache_path,
            inventory_skipped,
        )
        if cache is not None:
            cache.trim(settings.engine_cache_max_entries)
    finally:
        if cache is not None:
            cache.close()
    _add(inventory_skipped, scanned.inventory_skipped)
    ctx.scanned = scanned
    measured = scanned.measured
    ctx.sections["inventory"] = summarise(scanned.counted, inventory_skipped).to_dict()
    ctx.sections["complexity"] = {
        "functions": scanned.functions,
        "files_parsed": measured.files_parsed,
        "files_reused": scanned.reused,
        "skipped": dict(sorted(measured.skipped.items())),
        "average": round(scanned.cyclomatic / scanned.functions, 2) if scanned.functions else 0,
        # The report keeps the functions worth reading, not all of them: a large repository has tens of thousands.
        "top": [f._asdict() for f in ranked(measured.functions)[:TOP_FUNCTIONS]],
    }
    ctx.sections["secrets"] = SecretScan(
        findings=sorted(scanned.secrets, key=lambda f: (f.path, f.line, f.column, f.rule_id)),
        files_scanned=scanned.secrets_scanned,
        skipped=dict(sorted(scanned.secrets_skipped.items())),
    ).to_dict()


def ranked(functions: list[FunctionMetrics]) -> list[FunctionMetrics]:
    """Functions in the report's order: most complex first."""
    return sorted(functions, key=_ranking)
