"""What the engine's steps share: the job, the engine's settings, and what the steps before found.

A step is a function of a `Context`: it reads what it needs from it (the checkout, the history, the settings, the
tenant's keys) and writes its report sections and results back (engine/pipeline.py lists them in order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libs.common.errors import ErrorSpec
from repolens.tenants.v1 import tenants_pb2
from services.analysis.domain import TenantConfig
from services.analysis.engine.llm_review import ReviewSettings
from services.analysis.urls import RepositoryLocation

if TYPE_CHECKING:
    from services.analysis.engine.churn import Churn
    from services.analysis.engine.scan import Scanned


@dataclass(frozen=True)
class EngineSettings:
    """The engine's part of the worker's settings, by the same names (`from_settings` copies them)."""

    fetch_timeout_s: float = 300.0
    max_repository_bytes: int = 500_000_000
    churn_window_days: int = 365
    churn_max_commits: int = 1000
    work_dir: str = ""
    engine_cache_dir: str = ""
    engine_cache_max_entries: int = 200_000
    review: ReviewSettings = field(default_factory=ReviewSettings)

    @classmethod
    def from_settings(cls, settings: Any) -> EngineSettings:
        """From AnalysisSettings: a setting of the engine is a field here and one in the settings class."""
        names = {f.name for f in dataclasses.fields(cls)} - {"review"}
        return cls(**{name: getattr(settings, name) for name in names}, review=ReviewSettings.from_settings(settings))


@dataclass(frozen=True)
class Job:
    """What one analysis analyses: where the repository is, which ref, with the tenant's settings and keys."""

    repository: dict[str, str]  # id, name, url: as the report names it
    ref: str = ""
    location: RepositoryLocation | None = None  # None: the tree is on disk already (benchmarks, tests)
    config: TenantConfig = field(default_factory=TenantConfig)
    # The report this one is compared with, for what is new and fixed (None: the first): the default branch's analysis
    # before this one, or a branch's or pull request's base (use_cases.base_report).
    previous_report: Callable[[], Awaitable[dict[str, Any] | None]] | None = None
    # A branch or pull request: the tenant's `branch_gate` says which conditions decide (new code by default).
    judged_on_new_code: bool = False


class StepError(Exception):
    """A step could not do its job, for a reason the analysis ends with (a clone refused or too large...)."""

    def __init__(self, spec: ErrorSpec):
        super().__init__(spec.code)
        self.spec = spec


@dataclass
class Context:
    job: Job
    settings: EngineSettings
    should_stop: Callable[[], bool] = lambda: False
    pool: Executor | None = None  # the worker's engine processes, for the per-file steps
    # How far the running step is, 0 to 1 (steps that can tell call it; the pipeline turns it into percents).
    advance: Callable[[float], None] = lambda fraction: None
    checkout: Path = field(default_factory=Path)  # the tree, once fetched
    commit_sha: str = ""
    history: Churn | None = None
    scanned: Scanned | None = None
    paths: list[str] = field(default_factory=list)  # every regular file of the tree, in order
    sections: dict[str, Any] = field(default_factory=dict)  # the report, section by section

    @property
    def gate(self) -> tenants_pb2.QualityGate:
        return self.job.config.quality_gate
