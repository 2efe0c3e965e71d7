"""The RepoLens stack on given PostgreSQL and NATS URLs: migrations, the services, the gateway, readiness."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self, TextIO

import httpx

from libs.devstack.servers import LOCALHOST, free_port
from libs.devstack.supervisor import ChildExit, Supervisor

# gRPC services in start order; each has `migrate` and `serve` commands.
GRPC_SERVICES = ("auth", "tenants", "analysis")
WORKER = "worker"
GATEWAY = "gateway"
SERVICES = (*GRPC_SERVICES, WORKER, GATEWAY)


class StackError(RuntimeError):
    """The stack failed to migrate or to become ready; the message carries the end of the logs."""


class Stack:
    """Runs migrations, then auth, tenants and the gateway as child processes, and waits until ready.

    Every process gets the current environment plus DATABASE_URL, NATS_URL, ENVIRONMENT, its ports and
    the gRPC targets, then `extra_env` on top. Ports stay the same across `stop_service`/`start_service`.
    """

    def __init__(
        self,
        database_url: str,
        nats_url: str,
        *,
        environment: str = "development",
        http_port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        output: TextIO | None = None,
        log_file: str | Path | None = None,
        color: bool | None = None,
        cwd: str | Path | None = None,
        python: str = sys.executable,
        ready_timeout: float = 60.0,
        migrate_timeout: float = 120.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.database_url = database_url
        self.nats_url = nats_url
        self.environment = environment
        self.http_port = http_port if http_port is not None else free_port()
        self.grpc_ports = {name: free_port() for name in GRPC_SERVICES}
        # Every process serves Prometheus metrics on a port of its own (METRICS_PORT).
        self.metrics_ports = {name: free_port() for name in SERVICES}
        self.extra_env = dict(extra_env or {})
        self.cwd = Path(cwd) if cwd is not None else None
        self.python = python
        self.ready_timeout = ready_timeout
        self.migrate_timeout = migrate_timeout
        self.stop_timeout = stop_timeout
        self.supervisor = Supervisor(output=output, log_file=log_file, color=color)
        self._started = False

    # ------------------------------------------------------------------ addresses and environment

    @property
    def gateway_url(self) -> str:
        return f"http://{LOCALHOST}:{self.http_port}"

    def grpc_target(self, name: str) -> str:
        return f"{LOCALHOST}:{self.grpc_ports[name]}"

    def metrics_url(self, name: str) -> str:
        return f"http://{LOCALHOST}:{self.metrics_ports[name]}/metrics"

    def env(self, name: str) -> dict[str, str]:
        """The whole environment `name` runs with."""
        env = dict(os.environ)
        env.update(
            {
                "ENVIRONMENT": self.environment,
                "DATABASE_URL": self.database_url,
                "NATS_URL": self.nats_url,
                "AUTH_GRPC_TARGET": self.grpc_target("auth"),
                "TENANTS_GRPC_TARGET": self.grpc_target("tenants"),
                "ANALYSIS_GRPC_TARGET": self.grpc_target("analysis"),
                # A developer's own machine: local checkouts may be analysed (production refuses this).
                "ALLOW_LOCAL_REPOSITORIES": "true",
                "HTTP_HOST": LOCALHOST,
                "HTTP_PORT": str(self.http_port),
                # Lines must reach the combined log as they are written, not when a buffer fills.
                "PYTHONUNBUFFERED": "1",
            }
        )
        env["METRICS_HOST"] = LOCALHOST
        env["METRICS_PORT"] = str(self.metrics_ports[name])
        if name in self.grpc_ports:
            env["GRPC_PORT"] = str(self.grpc_ports[name])
        else:
            env.pop("GRPC_PORT", None)
        if self.environment == "test":  # one gateway process, and every request in its log: tests read both
            env["GATEWAY_WORKERS"] = "1"
            env["ACCESS_LOG_SAMPLE_RATE"] = "1.0"
        env.update(self.extra_env)
        return env

    def argv(self, name: str, command: str = "serve") -> list[str]:
        if name == GATEWAY:
            return [self.python, "-m", GATEWAY]
        if name == WORKER:
            return [self.python, "-m", "services.analysis", "worker"]
        if command == "migrate":
            return [self.python, "-m", f"services.{name}", "migrate", "up"]
        return [self.python, "-m", f"services.{name}", command]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Migrate, start every process, wait for readiness; on failure stop what started and raise."""
        if self._started:
            return
        self._started = True
        try:
            self.migrate()
            for name in SERVICES:
                self.supervisor.start(name, self.argv(name), env=self.env(name), cwd=self.cwd)
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    def migrate(self) -> None:
        """Run every gRPC service's `migrate` command; each must exit 0."""
        # Side by side: each service migrates its own schema under its own advisory lock, and on two
        # cores this halves the wait, which is mostly interpreter and import start-up.
        for name in GRPC_SERVICES:
            self.supervisor.start(name, self.argv(name, "migrate"), env=self.env(name), cwd=self.cwd, one_shot=True)
        deadline = time.monotonic() + self.migrate_timeout
        failures = []
        for name in GRPC_SERVICES:
            try:
                code = self.supervisor.wait(name, max(0.0, deadline - time.monotonic()))
            except TimeoutError as exc:
                failures.append((name, str(exc)))
                continue
            if code != 0:
                failures.append((name, f"`{name} migrate` exited with code {code}"))
        if failures:
            names = [name for name, _ in failures]
            raise StackError("; ".join(reason for _, reason in failures) + "\n" + self._tails(names))

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the gateway's /health/ready answers 200; fail early if a process dies meanwhile."""
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        url = f"{self.gateway_url}/health/ready"
        last = "no answer yet"
        with httpx.Client(timeout=httpx.Timeout(2.0, connect=1.0)) as client:
            while True:
                dead = [name for name in SERVICES if name in self.supervisor.names and not self.is_running(name)]
                if dead:
                    codes = ", ".join(f"{n} (code {self.supervisor.returncode(n)})" for n in dead)
                    raise StackError(f"exited before the stack was ready: {codes}\n{self._tails()}")
                try:
                    response = client.get(url)
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:300]}"
                if time.monotonic() > deadline:
                    raise StackError(f"{url} not ready within {limit:.0f} s (last: {last})\n{self._tails()}")
                time.sleep(0.2)

    def stop_service(self, name: str) -> int | None:
        """Stop one process (SIGTERM, then SIGKILL); returns its exit code."""
        self._check_name(name)
        return self.supervisor.stop(name, timeout=self.stop_timeout)

    def start_service(self, name: str, *, wait: bool = True) -> None:
        """Start a stopped process again, same port and environment; by default wait for readiness."""
        self._check_name(name)
        self.supervisor.start(name)
        if wait:
            self.wait_ready()

    def is_running(self, name: str) -> bool:
        return self.supervisor.is_running(name)

    def logs(self, name: str) -> str:
        """What `name` wrote (its migration too), last lines only."""
        return self.supervisor.logs(name)

    @property
    def unexpected_exits(self) -> list[ChildExit]:
        return self.supervisor.unexpected_exits

    def close(self) -> None:
        """Stop every process; safe to call twice."""
        self.supervisor.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_name(self, name: str) -> None:
        if name not in SERVICES:
            raise KeyError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")

    def _tails(self, names: list[str] | None = None, lines: int = 40) -> str:
        parts = []
        for name in names or [n for n in SERVICES if n in self.supervisor.names]:
            parts.append(f"--- last lines of {name} ---\n{self.supervisor.tail(name, lines) or '(no output)'}")
        return "\n".join(parts)
