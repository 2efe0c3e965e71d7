"""The whole stack on embedded servers for the benchmarks (bench/read_path.py, bench/soak.py), and a small git
repository to analyse."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.devstack.servers import LOCALHOST, EmbeddedNats, EmbeddedPostgres, EmbeddedValkey  # noqa: E402
from libs.devstack.stack import WORKER, Stack  # noqa: E402

UNLIMITED = "100000000/minute"
WORKER_READY_S = 180.0


@contextlib.contextmanager
def embedded_stack(root: Path, *, production_like: bool, env: Mapping[str, str], log: Path) -> Iterator[Stack]:
    """PostgreSQL, NATS (and Valkey, JSON logs, when `production_like`) under `root`, the stack in development mode
    as `make run` runs it with `env` on top; yields once the gateway and the analysis worker are ready."""
    extra = dict(env)
    with contextlib.ExitStack() as running:
        postgres = EmbeddedPostgres(root / "pg", database="repolens", delete_on_stop=True)
        nats = EmbeddedNats(root / "nats")
        postgres.start()
        running.callback(postgres.stop)
        nats.start()
        running.callback(nats.delete)
        if production_like:
            valkey = EmbeddedValkey(root / "valkey")
            valkey.start()
            running.callback(valkey.delete)
            extra |= {"LOG_JSON": "true", "REDIS_URL": valkey.url}
        stack = running.enter_context(
            Stack(postgres.url, nats.url, environment="development", extra_env=extra, log_file=log)
        )
        _wait_worker(stack)
        yield stack


def _wait_worker(stack: Stack) -> None:
    """Waits for the worker's own readiness, which the gateway's does not include: its engine processes take tens
    of seconds to start, and work queued meanwhile would be measured as start-up."""
    url = f"http://{LOCALHOST}:{stack.metrics_ports[WORKER]}/health/ready"
    deadline = time.monotonic() + WORKER_READY_S
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker was not ready within {WORKER_READY_S:.0f} s\n{stack.logs(WORKER)}")
        time.sleep(0.5)


def git_checkout(root: Path) -> Path:
    """A one-file git repository under `root`, for the stack to analyse (development mode allows local paths)."""
    source = root / "src"
    source.mkdir()
    (source / "main.py").write_text("def f(a):\n    return a or 1\n", encoding="utf-8")
    for command in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "bench"]):
        subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *command],
            cwd=source,
            check=True,
        )
    return source
