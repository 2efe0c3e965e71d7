"""The engine: every step of an analysis, from the clone to the report, in order, each declared once.

A step is a function of the `Context` (engine/context.py) in a module of its own: it reads what the steps before
it left there and adds its report sections. Adding a step is one module and one line in `STEPS`; its weight is
its share of the progress bar, `blocking` steps (disk and CPU) run in a thread, and `wanted` says when it runs.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from repolens.tenants.v1 import tenants_pb2
from services.analysis.domain import TenantConfig
from services.analysis.engine import churn, dependencies, fetch, findings, hotspots, llm_review, scan
from services.analysis.engine.churn import Churn
from services.analysis.engine.context import Context, EngineSettings, Job
from services.analysis.engine.inventory import Cancelled
from services.analysis.engine.scan import start_pool

__all__ = ["STEPS", "Outcome", "Step", "analyse", "run", "start_pool"]

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class Step:
    name: str  # shown while it runs (`step`), and its key in the report's `timings`
    weight: int  # its share of the progress bar
    run: Callable[[Context], Awaitable[None]] | Callable[[Context], None]
    blocking: bool = False  # disk or CPU work: runs in a thread, off the worker's event loop
    needs_checkout: bool = True  # the clone is removed once no step left needs it
    wanted: Callable[[Context], bool] = lambda ctx: True
    offline: bool = False  # works on a tree on disk alone: the steps `analyse` runs


STEPS: tuple[Step, ...] = (
    Step("fetch", 10, fetch.step),
    Step("churn", 5, churn.step),
    Step("scan", 60, scan.step, blocking=True, offline=True),  # inventory, complexity, secrets: one read per file
    Step("hotspots", 1, hotspots.step, blocking=True, needs_checkout=False, offline=True),
    Step("dependencies", 4, dependencies.step, blocking=True, offline=True),
    Step("findings", 4, findings.step, blocking=True, needs_checkout=False, offline=True),  # and the gate
    Step("review", 14, llm_review.step, needs_checkout=False, wanted=llm_review.wanted),
    Step("changes", 2, findings.changes_step, needs_checkout=False),
)


@dataclass
class Outcome:
    """What the steps produced: the report sections, the commit analysed and each step's time."""

    sections: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    commit_sha: str = ""
    repository: dict[str, str] = field(default_factory=dict)
    ref: str = ""

    @property
    def report(self) -> dict[str, Any]:
        """The analysis's report: what was analysed, then every section, then each step's time."""
        return {
            "repository": self.repository,
            "ref": self.ref,
            "commit_sha": self.commit_sha,
            **self.sections,
            "timings": dict(self.timings),
        }


def _percent(done: int, weight: int, fraction: float, total: int) -> int:
    """Progress while a step runs; 100 only once the analysis has ended."""
    return min(99, int(100 * (done + weight * min(max(fraction, 0.0), 1.0)) / total))


async def run(
    job: Job,
    *,
    settings: EngineSettings,
    should_stop: Callable[[], bool],
    progress: Progress,
    timings: dict[str, float],
    pool: Executor | None = None,
) -> Outcome:
    """Every wanted step on the job, in order; `progress(step, percent)` follows them and `timings` fills as each
    ends. Raises `Cancelled` (or the fetch's `FetchCancelled`) once `should_stop()` turns true, and `StepError`
    when a step cannot do its job."""
    with tempfile.TemporaryDirectory(prefix="repolens-", dir=settings.work_dir or None) as workspace:
        ctx = Context(job=job, settings=settings, should_stop=should_stop, pool=pool, checkout=Path(workspace) / "src")
        await _drive(ctx, [step for step in STEPS if step.wanted(ctx)], progress, timings, remove_checkout=True)
    return Outcome(
        sections=ctx.sections, timings=timings, commit_sha=ctx.commit_sha, repository=job.repository, ref=job.ref
    )


def analyse(
    src: Path,
    *,
    gate: tenants_pb2.QualityGate,
    should_stop: Callable[[], bool],
    progress: Progress,
    pool: Executor | None = None,
    churn: Churn | None = None,
    cache_dir: str = "",
    cache_max_entries: int = 200_000,
) -> Outcome:
    """The offline steps (scan, hotspots, dependencies, findings) on a tree already on disk: the same step
    functions a worker runs, for benchmarks and tests (not from within an event loop). `churn` stands for the
    history the churn step would have read."""
    settings = EngineSettings(engine_cache_dir=cache_dir, engine_cache_max_entries=cache_max_entries)
    job = Job(repository={}, config=TenantConfig(quality_gate=gate))
    ctx = Context(job=job, settings=settings, should_stop=should_stop, pool=pool, checkout=src, history=churn)
    outcome = Outcome()
    asyncio.run(_drive(ctx, [step for step in STEPS if step.offline], progress, outcome.timings, remove_checkout=False))
    outcome.sections = ctx.sections
    return outcome


async def _drive(
    ctx: Context, steps: list[Step], progress: Progress, timings: dict[str, float], *, remove_checkout: bool
) -> None:
    total, done = sum(step.weight for step in steps), 0
    for index, step in enumerate(steps):
        if ctx.should_stop():
            raise Cancelled()

        def advance(fraction: float, step: Step = step, done: int = done) -> None:
            progress(step.name, _percent(done, step.weight, fraction, total))

        ctx.advance = advance
        advance(0.0)
        started = time.perf_counter()
        if step.blocking:
            await asyncio.to_thread(cast(Callable[[Context], None], step.run), ctx)
        else:
            await cast(Callable[[Context], Awaitable[None]], step.run)(ctx)
        timings[step.name] = round(time.perf_counter() - started, 3)
        done += step.weight
        if remove_checkout and not any(later.needs_checkout for later in steps[index + 1 :]):
            # The rest (the review, network I/O) needs no disk: the clone goes as soon as it can.
            await asyncio.to_thread(shutil.rmtree, ctx.checkout, True)
            remove_checkout = False
