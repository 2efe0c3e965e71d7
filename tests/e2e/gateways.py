"""Extra gateway processes in front of a running stack's services, for tests of the gateway as a process."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from libs.devstack.servers import LOCALHOST, free_port
from libs.devstack.stack import Stack
from libs.devstack.supervisor import Supervisor


class Gateways:
    """Extra `python -m gateway` processes on free ports, against a running stack's services."""

    def __init__(self, stack: Stack, log_file: Path):
        self.stack = stack
        self.supervisor = Supervisor(log_file=log_file)
        self.count = 0

    def start(self, *envs: Mapping[str, str]) -> list[str]:
        """One gateway per environment (on top of the stack's, its relaxed limits removed), started side by
        side; returns their URLs once all are ready."""
        started = {}
        for env in envs:
            name, port = f"gateway-{self.count}", free_port()
            self.count += 1
            environment = {k: v for k, v in self.stack.env("gateway").items() if not k.startswith("RATE_LIMIT_")}
            environment.update({"HTTP_PORT": str(port), "METRICS_PORT": str(free_port()), **env})
            self.supervisor.start(name, self.stack.argv("gateway"), env=environment)
            started[name] = f"http://{LOCALHOST}:{port}"
        deadline = time.monotonic() + 60
        for name, url in started.items():
            while not self._ready(url):
                if not self.supervisor.is_running(name) or time.monotonic() > deadline:
                    raise AssertionError(f"{name} did not become ready:\n{self.supervisor.tail(name)}")
                time.sleep(0.1)
        return list(started.values())

    @staticmethod
    def _ready(url: str) -> bool:
        try:
            return httpx.get(f"{url}/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.supervisor.close()
