"""`python -m libs.devstack run`: PostgreSQL, NATS, Valkey, the services and the gateway in one terminal (make run)."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, NoReturn

from libs.devstack.servers import (
    EmbeddedNats,
    EmbeddedPostgres,
    EmbeddedValkey,
    ServerStartError,
    free_port,
    port_is_free,
)
from libs.devstack.stack import Stack, StackError

DEFAULT_HTTP_PORT = 8000
# Not 4222: a NATS may already run there, and our data must not land in it.
DEFAULT_NATS_PORT = 4333
# Not 6379, for the same reason.
DEFAULT_VALKEY_PORT = 6380
DATABASE_NAME = "repolens"


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # The same cleanup path as Ctrl-C.
    raise KeyboardInterrupt


def _say(message: str) -> None:
    sys.stdout.write(f"devstack | {message}\n")
    sys.stdout.flush()


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """One launcher per data directory: a second one would stop the first one's PostgreSQL on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (data_dir / ".lock").open("w")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"devstack: another launcher is using {data_dir}; stop it first") from None
        yield
    finally:
        handle.close()


def _rotate(log: Path) -> None:
    """Keep the previous run's log as `*.1`, so that logs do not grow forever but a crash can still be read."""
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))


def _http_port(args: argparse.Namespace) -> int:
    if args.http_port is not None:
        port: int = args.http_port
    else:
        try:
            port = int(os.environ.get("HTTP_PORT", DEFAULT_HTTP_PORT))
        except ValueError:
            raise SystemExit("devstack: HTTP_PORT must be a number") from None
    if not port_is_free(port):
        raise SystemExit(f"devstack: port {port} is in use; free it or set HTTP_PORT to another port")
    return port


def run(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).absolute()
    http_port = _http_port(args)
    postgres: EmbeddedPostgres | None = None
    nats: EmbeddedNats | None = None
    valkey: EmbeddedValkey | None = None
    stack: Stack | None = None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # A shell that starts us in the background ignores SIGINT for us; Ctrl-C and `kill -INT` must still work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _exclusive(data_dir):
            for log in ("devstack.log", "nats.log", "valkey.log"):
                _rotate(data_dir / log)
            try:
                database_url = os.environ.get("DATABASE_URL")
                if not database_url:
                    _say(f"starting PostgreSQL in {data_dir / 'postgres'}")
                    postgres = EmbeddedPostgres(data_dir / "postgres", DATABASE_NAME)
                    postgres.start()
                    database_url = postgres.url
                nats_url = os.environ.get("NATS_URL")
                if not nats_url:
                    nats_port = DEFAULT_NATS_PORT if port_is_free(DEFAULT_NATS_PORT) else free_port()
                    _say(f"starting NATS with JetStream on port {nats_port}, store in {data_dir / 'nats'}")
                    nats = EmbeddedNats(data_dir / "nats", nats_port, log_file=data_dir / "nats.log")
                    nats.start()
                    nats_url = nats.url
                redis_url = os.environ.get("REDIS_URL", "")
                if not redis_url:
                    valkey, redis_url = _start_valkey(data_dir)
                stack = Stack(
                    database_url,
                    nats_url,
                    environment=os.environ.get("ENVIRONMENT", "development"),
                    http_port=http_port,
                    extra_env={
                        "REDIS_URL": redis_url,
                        # Analyses of a repository analysed before reuse what was measured of its unchanged files.
                        "ENGINE_CACHE_DIR": os.fspath(data_dir / "engine-cache"),
                    },
                    output=sys.stdout,
                    log_file=data_dir / "devstack.log",
                )
                stack.start()
            except (ServerStartError, StackError, FileNotFoundError) as exc:
                sys.stderr.write(f"devstack: startup failed: {exc}\n")
                return 1
            _banner(stack, database_url, nats_url, redis_url, data_dir, postgres is not None, nats is not None)
            while True:
                crashed = stack.supervisor.wait_for_unexpected_exit(timeout=1.0)
                if crashed is not None:
                    sys.stderr.write(
                        f"devstack: {crashed.name} exited unexpectedly with code {crashed.returncode}; "
                        "stopping everything\n"
                    )
                    return 1
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stack is not None:
            stack.close()
        if nats is not None:
            nats.stop()
        if valkey is not None:
            valkey.stop()
        if postgres is not None:
            postgres.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)


def _start_valkey(data_dir: Path) -> tuple[EmbeddedValkey | None, str]:
    """An embedded Valkey for the rate-limit counters, as production keeps them in Redis; without a
    valkey-server for this platform the gateway counts in its own memory, which is enough for one gateway."""
    port = DEFAULT_VALKEY_PORT if port_is_free(DEFAULT_VALKEY_PORT) else free_port()
    valkey = EmbeddedValkey(data_dir / "valkey", port, log_file=data_dir / "valkey.log")
    try:
        valkey.start()
    except FileNotFoundError as exc:
        _say(f"{exc}: rate limits stay in the gateway's memory")
        return None, ""
    _say(f"started Valkey (rate-limit counters, nothing saved) on port {port}")
    return valkey, valkey.url


def _banner(
    stack: Stack, database_url: str, nats_url: str, redis_url: str, data_dir: Path, own_postgres: bool, own_nats: bool
) -> None:
    where = []
    if own_postgres:
        where.append(f"PostgreSQL data in {data_dir / 'postgres'}")
    if own_nats:
        where.append(f"NATS store in {data_dir / 'nats'}")
    lines = [
        f"RepoLens is up: {stack.gateway_url}",
        f"  API docs     {stack.gateway_url}/docs",
        f"  PostgreSQL   {database_url}",
        f"  NATS         {nats_url}",
        f"  Redis        {redis_url or 'none: the gateway counts rate limits in its own memory'}",
        f"  data         {'; '.join(where) if where else 'external servers (DATABASE_URL, NATS_URL)'}",
        f"  log          {data_dir / 'devstack.log'}",
        "  metrics      " + ", ".join(f"{name} :{port}" for name, port in stack.metrics_ports.items()),
        "  Ctrl-C stops everything",
    ]
    for line in lines:
        _say(line)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libs.devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run",
        help="start everything on http://127.0.0.1:8000 (Ctrl-C stops it)",
        description=(
            "Start PostgreSQL (unless DATABASE_URL is set), NATS with JetStream (unless NATS_URL is set; port "
            f"{DEFAULT_NATS_PORT} or a free one), Valkey for rate limits (unless REDIS_URL is set; port "
            f"{DEFAULT_VALKEY_PORT} or a free one), then the services and the gateway on HTTP_PORT "
            f"(default {DEFAULT_HTTP_PORT})."
        ),
    )
    run_parser.add_argument("--data-dir", default=".data", help="where PostgreSQL and NATS keep data (.data)")
    run_parser.add_argument("--http-port", type=int, default=None, help="gateway port (env HTTP_PORT, 8000)")
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
