"""`/health/live` and `/health/ready` on a process's metrics port: live while its event loop runs, ready when the
process says so, and `/metrics` served beside them."""

from __future__ import annotations

import asyncio
import time

import httpx

from libs.common import metrics
from libs.common.config import CommonSettings
from libs.devstack.servers import free_port


async def _get(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(url)).status_code


async def test_live_follows_the_event_loop_and_ready_the_process() -> None:
    port = free_port()
    settings = CommonSettings(metrics_port=port, metrics_host="127.0.0.1")
    state = {"ready": False}
    health = metrics.Health(stale_s=0.6, ready=lambda: state["ready"])
    observed = metrics.ProcessMetrics(settings, process="health-test", health=health)
    observed.start()
    base = f"http://127.0.0.1:{port}"
    try:
        assert await _get(f"{base}/health/live") == 200
        assert await _get(f"{base}/health/ready") == 503  # live, but the process is not ready yet
        state["ready"] = True
        assert await _get(f"{base}/health/ready") == 200
        async with httpx.AsyncClient(timeout=5) as client:
            scraped = await client.get(f"{base}/metrics")
        assert scraped.status_code == 200
        assert "repolens_" in scraped.text

        # A call that blocks the loop: the heartbeat stops, and a probe from another thread sees it.
        def probe_later() -> tuple[int, int]:
            time.sleep(1.0)
            with httpx.Client(timeout=5) as client:
                return client.get(f"{base}/health/live").status_code, client.get(f"{base}/health/ready").status_code

        loop = asyncio.get_running_loop()
        probed = loop.run_in_executor(None, probe_later)
        time.sleep(1.5)  # noqa: ASYNC251 - blocking the event loop is what this test is about
        assert await probed == (503, 503)
        await asyncio.sleep(1.2)  # the heartbeat runs again
        assert await _get(f"{base}/health/live") == 200
    finally:
        await observed.stop()


async def test_a_failing_readiness_test_is_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("no connection object yet")

    health = metrics.Health(stale_s=5, ready=broken)
    assert health.live()
    assert not health.ready()


async def test_without_health_the_port_serves_only_metrics() -> None:
    port = free_port()
    observed = metrics.ProcessMetrics(CommonSettings(metrics_port=port, metrics_host="127.0.0.1"), process="plain")
    observed.start()
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            answer = await client.get(f"http://127.0.0.1:{port}/health/live")
        assert answer.status_code == 200
        assert "repolens_" in answer.text  # the metrics page, as for any other path
    finally:
        await observed.stop()
