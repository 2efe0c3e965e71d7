"""GATEWAY_WORKERS: gateway processes sharing one port, started, stopped and ended together by their parent."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.devstack.procfs import alive, children
from libs.devstack.servers import LOCALHOST, port_is_free
from libs.devstack.stack import Stack
from tests.e2e.gateways import Gateways


@pytest.fixture
def gateways(stack: Stack, tmp_path: Path) -> Iterator[Gateways]:
    running = Gateways(stack, tmp_path / "gateways.log")
    try:
        yield running
    finally:
        running.close()


def _gone(pids: list[int], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _answered(metrics_port: int) -> float:
    text = httpx.get(f"http://{LOCALHOST}:{metrics_port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "repolens_http_requests"
        for sample in family.samples
        if sample.name == "repolens_http_requests_total" and sample.labels.get("route") == "/health/live"
    )


def _two_free_ports() -> int:
    """The first of two free consecutive ports, below the kernel's range of ephemeral ports: a port from that range
    (where `free_port` picks) can be taken by any outgoing connection between the check and the workers' bind: the
    likely cause of a worker's metrics port refusing connections in one CI run."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.Random().sample(range(10_000, low - 1), 500):
        if port_is_free(port) and port_is_free(port + 1):
            return port
    raise AssertionError("no two free consecutive ports")


def _all_started(gateways: Gateways, name: str, workers: int, timeout: float = 60.0) -> None:
    """Waits until each of `workers` has ended its start-up. The gateway is ready once one worker answers on the
    shared port; another may still be importing (a CI run saw the second one 0.9 s later, its metrics port not yet
    bound), and a SIGTERM that lands during its imports meets coverage's own handler instead of uvicorn's."""
    deadline = time.monotonic() + timeout
    while sum("Application startup complete" in line for line in gateways.supervisor.lines(name)) < workers:
        assert time.monotonic() < deadline, gateways.supervisor.tail(name)
        time.sleep(0.05)


def _two_workers(gateways: Gateways) -> tuple[str, int, int, list[int]]:
    """A gateway of two workers, both started: its URL, first metrics port, parent pid and worker pids."""
    metrics_port = _two_free_ports()
    (url,) = gateways.start({"GATEWAY_WORKERS": "2", "METRICS_PORT": str(metrics_port)})
    _all_started(gateways, f"gateway-{gateways.count - 1}", workers=2)
    parent = gateways.supervisor.pid(f"gateway-{gateways.count - 1}")
    assert parent is not None
    workers = children(parent)
    assert len(workers) == 2
    return url, metrics_port, parent, workers


def test_two_workers_share_the_port_and_each_serves_its_metrics(gateways: Gateways) -> None:
    url, metrics_port, _, _ = _two_workers(gateways)
    with httpx.Client(base_url=url, timeout=5) as client:
        for _ in range(200):
            assert client.get("/health/live", headers={"Connection": "close"}).status_code == 200
    first, second = _answered(metrics_port), _answered(metrics_port + 1)
    assert first > 0  # the kernel spread the connections over both workers
    assert second > 0
    assert first + second >= 200


def test_sigterm_to_the_parent_stops_every_worker_and_ends_cleanly(gateways: Gateways) -> None:
    _, _, parent, workers = _two_workers(gateways)
    os.kill(parent, signal.SIGTERM)  # the parent only, as a process manager would
    assert gateways.supervisor.wait(f"gateway-{gateways.count - 1}", timeout=30) == 0
    assert _gone(workers)


def test_a_worker_that_dies_ends_the_gateway_with_an_error(gateways: Gateways) -> None:
    *_, workers = _two_workers(gateways)
    os.kill(workers[0], signal.SIGKILL)
    assert gateways.supervisor.wait(f"gateway-{gateways.count - 1}", timeout=30) == 1  # so it gets restarted whole
    assert _gone(workers)


def test_workers_do_not_outlive_a_parent_killed_outright(gateways: Gateways) -> None:
    _, _, parent, workers = _two_workers(gateways)
    os.kill(parent, signal.SIGKILL)
    assert _gone(workers)
