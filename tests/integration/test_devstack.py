"""The local stack launcher: embedded PostgreSQL and NATS, the supervisor, the Stack and `python -m libs.devstack`."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import psycopg
import pytest

from libs.devstack.servers import (
    EmbeddedNats,
    EmbeddedPostgres,
    ServerStartError,
    create_database,
    database_url_for,
    drop_database,
    free_port,
    port_is_free,
)
from libs.devstack.stack import SERVICES, Stack, StackError
from libs.devstack.supervisor import ChildExit, Supervisor

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may wait for a PID 1 that never reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_until(condition: object, timeout: float) -> bool:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    out = io.StringIO()
    with Supervisor(output=out, log_file=tmp_path / "combined.log") as sup:
        yield sup


def _output(sup: Supervisor) -> str:
    stream = sup._output
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


# --------------------------------------------------------------------------- ports


def test_free_port_can_be_listened_on() -> None:
    port = free_port()
    assert port_is_free(port)
    with socket.create_server(("127.0.0.1", port)):
        assert not port_is_free(port)


# --------------------------------------------------------------------------- PostgreSQL


def test_embedded_postgres_creates_its_database_and_keeps_data_across_restarts(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path / "pg", "repolens_dev")
    try:
        server.start()
        assert server.url == f"postgresql://postgres@/repolens_dev?host={server.socket_dir}"
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("repolens_dev",)
            assert conn.execute("SHOW max_connections").fetchone() == ("200",)
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        url = server.url
        server.stop()
        assert not server.running
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2).close()

        server.start()
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("still here",)]
    finally:
        server.stop()
    assert (tmp_path / "pg" / "PG_VERSION").exists()


def test_embedded_postgres_deleted_on_stop_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "gone"
    with EmbeddedPostgres(data_dir, delete_on_stop=True) as server:
        socket_dir = server.socket_dir
        with psycopg.connect(server.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not data_dir.exists()
    assert not (socket_dir / ".s.PGSQL.5432").exists()


def test_create_and_drop_database_on_the_test_server(postgres_server_url: str) -> None:
    name = f"devstack_probe_{os.getpid()}"
    url = create_database(postgres_server_url, name)
    assert create_database(postgres_server_url, name) == url  # a second call is a no-op
    holder = psycopg.connect(url, connect_timeout=5)
    try:
        assert holder.execute("SELECT current_database()").fetchone() == (name,)
        drop_database(postgres_server_url, name)  # even with a session still connected
    finally:
        holder.close()
    with psycopg.connect(postgres_server_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None


def test_database_url_for_keeps_host_and_query() -> None:
    assert (
        database_url_for("postgresql://postgres@/postgres?host=/tmp/x", "other")
        == "postgresql://postgres@/other?host=/tmp/x"
    )
    assert database_url_for("postgresql://u:p@127.0.0.1:5432/db", "x") == "postgresql://u:p@127.0.0.1:5432/x"


# --------------------------------------------------------------------------- NATS


async def test_embedded_nats_restart_on_the_same_port_keeps_jetstream_data(own_nats: EmbeddedNats) -> None:
    port, url = own_nats.port, own_nats.url
    client = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        js = client.jetstream(timeout=5)
        await js.add_stream(name="DEVSTACK", subjects=["devstack.>"])
        ack = await js.publish("devstack.kept", b"survives a restart")
    finally:
        await client.close()

    own_nats.stop()
    assert not own_nats.running
    assert port_is_free(port)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    own_nats.start()
    assert own_nats.port == port
    assert own_nats.url == url
    client = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        message = await client.jetstream(timeout=5).get_msg("DEVSTACK", ack.seq)
        assert message.data == b"survives a restart"
        assert message.subject == "devstack.kept"
    finally:
        await client.close()


def test_embedded_nats_stops_a_server_a_killed_launcher_left_on_its_store(tmp_path: Path) -> None:
    store = tmp_path / "nats"
    script = (
        "import time\n"
        "from libs.devstack.servers import EmbeddedNats\n"
        f"server = EmbeddedNats({str(store)!r})\n"
        "server.start()\n"
        "print(server.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    launcher = subprocess.Popen([PY, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        leftover = int(launcher.stdout.readline())
    finally:
        launcher.kill()
        launcher.wait(timeout=10)
    assert _alive(leftover)

    with EmbeddedNats(store) as server:
        assert _wait_until(lambda: not _alive(leftover), timeout=5)
        assert server.pid != leftover
        assert _nats_greets(server.port)


def _nats_greets(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return sock.recv(4).startswith(b"INFO")


def test_embedded_nats_reports_a_busy_port(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = EmbeddedNats(tmp_path / "nats", port)
        with pytest.raises(ServerStartError, match=str(port)):
            server.start(timeout=5)
        assert not server.running


# --------------------------------------------------------------------------- supervisor


def test_supervisor_prefixes_every_line_with_the_child_name(supervisor: Supervisor, tmp_path: Path) -> None:
    code = supervisor.run(
        "greeter",
        [PY, "-c", "import sys; print('hello'); print('oops', file=sys.stderr); print('bye')"],
        timeout=30,
    )
    assert code == 0
    out = _output(supervisor).splitlines()
    assert "greeter  | hello" in out
    assert "greeter  | oops" in out
    assert "greeter  | bye" in out
    assert "\033[" not in _output(supervisor)  # not a terminal: no colours
    # stdout and stderr share one pipe but not one buffer: their order may differ from the program's.
    assert sorted(supervisor.lines("greeter")) == ["bye", "hello", "oops"]
    assert "greeter  | hello" in (tmp_path / "combined.log").read_text()
    assert supervisor.unexpected_exits == []


def test_supervisor_colours_the_prefix_when_asked() -> None:
    out = io.StringIO()
    with Supervisor(output=out, color=True) as sup:
        assert sup.run("a", [PY, "-c", "print('x')"], timeout=30) == 0
    assert "\033[36ma        |\033[0m x" in out.getvalue()


def test_supervisor_stop_kills_the_whole_process_group(supervisor: Supervisor, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time, pathlib\n"
        f"child = subprocess.Popen([{PY!r}, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(300)\n"
    )
    supervisor.start("parent", [PY, "-c", script])
    supervisor.wait_for_line("parent", "started", timeout=30)
    grandchild = int(pid_file.read_text())
    parent = supervisor.pid("parent")
    assert parent is not None
    assert _alive(parent)
    assert _alive(grandchild)

    code = supervisor.stop("parent", timeout=5)

    assert code == -signal.SIGTERM
    assert not supervisor.is_running("parent")
    # The grandchild ignores SIGTERM; it must still be gone with its group.
    assert _wait_until(lambda: not _alive(grandchild), timeout=5)
    assert supervisor.unexpected_exits == []


def test_supervisor_kills_a_child_that_ignores_sigterm(supervisor: Supervisor) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(300)"
    )
    supervisor.start("stubborn", [PY, "-c", script])
    supervisor.wait_for_line("stubborn", "up", timeout=30)
    started = time.monotonic()
    assert supervisor.stop("stubborn", timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_supervisor_reports_an_unexpected_exit(tmp_path: Path) -> None:
    out = io.StringIO()
    seen: list[ChildExit] = []
    with Supervisor(output=out, on_unexpected_exit=seen.append) as sup:
        sup.start("crasher", [PY, "-c", "import sys; print('going down'); sys.exit(3)"])
        sup.start("sleeper", [PY, "-c", "import time; time.sleep(300)"])
        event = sup.wait_for_unexpected_exit(timeout=30)
        assert event == ChildExit("crasher", 3)
        assert sup.returncode("crasher") == 3
        assert sup.is_running("sleeper")
        assert _wait_until(lambda: seen == [ChildExit("crasher", 3)], timeout=5)
        assert "crasher  | *** exited unexpectedly with code 3" in out.getvalue()
        assert "going down" in sup.logs("crasher")

        sup.stop("sleeper")
        assert sup.wait_for_unexpected_exit(timeout=0.5) is None  # asked to stop: not a crash
        assert sup.unexpected_exits == [ChildExit("crasher", 3)]


def test_supervisor_starts_a_stopped_child_again_with_the_same_command(supervisor: Supervisor) -> None:
    env = {**os.environ, "GREETING": "from env"}
    supervisor.start(
        "again", [PY, "-c", "import os, time; print(os.environ['GREETING'], flush=True); time.sleep(300)"], env=env
    )
    supervisor.wait_for_line("again", "from env", timeout=30)
    first = supervisor.pid("again")
    with pytest.raises(RuntimeError, match="already running"):
        supervisor.start("again")
    supervisor.stop("again")
    supervisor.start("again")
    assert _wait_until(lambda: supervisor.lines("again").count("from env") == 2, timeout=30)
    assert supervisor.pid("again") != first
    assert supervisor.is_running("again")


def test_supervisor_run_kills_a_command_that_takes_too_long(supervisor: Supervisor) -> None:
    with pytest.raises(TimeoutError):
        supervisor.run("slow", [PY, "-c", "import time; time.sleep(300)"], timeout=0.5)
    assert not supervisor.is_running("slow")


# --------------------------------------------------------------------------- the stack and the launcher


def test_stack_environment_names_ports_targets_and_extra_env() -> None:
    stack = Stack("postgresql://db", "nats://n", environment="test", http_port=1234, extra_env={"LOG_LEVEL": "DEBUG"})
    auth, gateway = stack.env("auth"), stack.env("gateway")
    assert auth["GRPC_PORT"] == str(stack.grpc_ports["auth"])
    assert "GRPC_PORT" not in gateway
    assert gateway["AUTH_GRPC_TARGET"] == f"127.0.0.1:{stack.grpc_ports['auth']}"
    assert gateway["TENANTS_GRPC_TARGET"] == f"127.0.0.1:{stack.grpc_ports['tenants']}"
    assert gateway["HTTP_PORT"] == "1234"
    # Each process its own metrics port, none of them the public one.
    assert len({stack.env(name)["METRICS_PORT"] for name in SERVICES} - {"1234"}) == len(SERVICES)
    assert stack.metrics_url("gateway") == f"http://127.0.0.1:{stack.metrics_ports['gateway']}/metrics"
    assert stack.gateway_url == "http://127.0.0.1:1234"
    assert auth["DATABASE_URL"] == "postgresql://db"
    assert auth["NATS_URL"] == "nats://n"
    assert auth["ENVIRONMENT"] == "test"
    assert auth["LOG_LEVEL"] == "DEBUG"
    assert stack.argv("tenants", "migrate")[1:] == ["-m", "services.tenants", "migrate", "up"]
    assert stack.argv("worker")[1:] == ["-m", "services.analysis", "worker"]
    assert gateway["ANALYSIS_GRPC_TARGET"] == f"127.0.0.1:{stack.grpc_ports['analysis']}"
    assert stack.argv("gateway")[1:] == ["-m", "gateway"]
    with pytest.raises(KeyError):
        stack.stop_service("nope")


def test_stack_fails_with_the_migration_log_when_a_migration_fails(tmp_path: Path) -> None:
    # A database that does not exist on a server that does not listen: the first migration must fail.
    stack = Stack(
        f"postgresql://postgres@/nowhere?host={tmp_path}",
        "nats://127.0.0.1:1",
        environment="test",
        extra_env={"STARTUP_TIMEOUT_S": "1", "DB_CONNECT_TIMEOUT_S": "1"},
        migrate_timeout=60,
    )
    with pytest.raises(StackError, match="auth migrate"):
        stack.start()
    assert stack.logs("auth")
    assert not stack.is_running("gateway")


def test_stack_stops_and_starts_one_service_on_the_same_port(make_stack: object) -> None:
    assert callable(make_stack)
    stack: Stack = make_stack()
    before = stack.grpc_ports["tenants"]
    assert stack.stop_service("tenants") is not None
    assert not stack.is_running("tenants")
    stack.start_service("tenants")
    assert stack.is_running("tenants")
    assert stack.grpc_ports["tenants"] == before
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{stack.gateway_url}/health/ready").status_code == 200
    assert stack.unexpected_exits == []
    stack.close()
    assert not any(stack.is_running(name) for name in ("auth", "tenants", "gateway"))


def _launcher(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "libs.devstack", "run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_launcher_refuses_a_busy_http_port(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {**os.environ, "HTTP_PORT": str(port)}
        proc = _launcher(env, "--data-dir", str(tmp_path / "data"))
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert f"port {port} is in use" in output
    assert not (tmp_path / "data" / "postgres").exists()  # gave up before starting anything


def test_launcher_runs_everything_and_leaves_nothing_behind_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL", "REDIS_URL")}
    env["HTTP_PORT"] = str(port)
    data_dir = tmp_path / "data"
    proc = _launcher(env, "--data-dir", str(data_dir))
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            lines.append(line)
            if "RepoLens is up" in line or time.monotonic() > deadline:
                break
        assert any("RepoLens is up" in line for line in lines), "".join(lines[-60:])
        with httpx.Client(timeout=5) as client:
            assert client.get(f"http://127.0.0.1:{port}/health/ready").status_code == 200
        assert any(line.startswith("gateway  | ") for line in lines)
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert _alive(postmaster)
        valkey_line = next(line for line in lines if "started Valkey" in line)
        valkey_port = int(valkey_line.rsplit("on port ", 1)[1])
        assert not port_is_free(valkey_port)  # the embedded Valkey serves the rate-limit counters
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert port_is_free(port)
    assert _wait_until(lambda: not _alive(postmaster), timeout=10)
    assert (data_dir / "postgres" / "PG_VERSION").exists()  # data stays for the next `make run`
    assert (data_dir / "nats").is_dir()
    assert _wait_until(lambda: port_is_free(valkey_port), timeout=10)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_launcher_on_given_urls_stops_everything_when_a_service_crashes(
    database_url: str, own_nats: EmbeddedNats, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "NATS_URL": own_nats.url,
        "REDIS_URL": redis_url,
        "HTTP_PORT": str(port),
    }
    proc = _launcher(env, "--data-dir", str(tmp_path / "data"))
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:  # the banner's last line
                break
        banner = "".join(lines)
        assert f"RepoLens is up: http://127.0.0.1:{port}" in banner
        assert "external servers (DATABASE_URL, NATS_URL)" in banner
        assert f"Redis        {redis_url}" in banner
        services = {_cmdline(child): child for child in _children(proc.pid)}
        auth = next(pid for cmd, pid in services.items() if "services.auth serve" in cmd)
        assert len(services) == 5  # auth, tenants, analysis, worker, gateway
        os.kill(auth, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 1
    assert "auth exited unexpectedly with code -9; stopping everything" in rest
    assert not any(_alive(pid) for pid in services.values())
    assert port_is_free(port)
    assert not (tmp_path / "data" / "postgres").exists()  # DATABASE_URL was given: no embedded server
    assert own_nats.running  # a given NATS is not ours to stop
