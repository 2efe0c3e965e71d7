"""The JOBS stream: a work queue of analysis jobs."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from services.analysis.domain import JOBS_STREAM


async def ensure_jobs_stream(js: JetStreamContext) -> None:
    """A work queue: a job is removed once a worker acknowledged it."""
    config = StreamConfig(
        name=JOBS_STREAM,
        subjects=["repolens.jobs.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=120.0,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
