"""A small process group: named children, one combined prefixed log, stop/start by name, crash detection."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, NamedTuple, Self, TextIO

_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
_RESET = "\033[0m"


class ChildExit(NamedTuple):
    """A child that ended on its own; `returncode` is negative for a signal, as in `subprocess`."""

    name: str
    returncode: int


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None
    cwd: Path | None
    lines: collections.deque[str]
    process: subprocess.Popen[bytes] | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    expected_exit: bool = False
    pump: threading.Thread | None = None
    waiter: threading.Thread | None = None


class Supervisor:
    """Runs named child processes, each in its own session and process group.

    Output of every child goes, line by line and prefixed with its name, to `output` (if any) and to
    `log_file` (if any), and the last `max_lines` lines of each name stay in memory for `logs()`.
    A child that ends without `stop()` having been asked is recorded as an unexpected exit.
    """

    def __init__(
        self,
        *,
        output: TextIO | None = None,
        log_file: str | Path | None = None,
        color: bool | None = None,
        max_lines: int = 2000,
        name_width: int = 8,
        on_unexpected_exit: Callable[[ChildExit], None] | None = None,
    ) -> None:
        self._output = output
        if color is None:
            color = output is not None and _isatty(output) and "NO_COLOR" not in os.environ
        self._color = color
        self._log: IO[str] | None = None
        if log_file is not None:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            # Open for the supervisor's lifetime; close() closes it.
            self._log = Path(log_file).open("a", encoding="utf-8")  # noqa: SIM115
        self._max_lines = max_lines
        self._name_width = name_width
        self._on_unexpected_exit = on_unexpected_exit
        self._children: dict[str, _Child] = {}
        self._colours: dict[str, str] = {}
        self._write_lock = threading.Lock()
        self._state = threading.Condition()
        self._unexpected: list[ChildExit] = []
        self._unseen: collections.deque[ChildExit] = collections.deque()

    # ------------------------------------------------------------------ starting and stopping

    def start(
        self,
        name: str,
        argv: Sequence[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        one_shot: bool = False,
    ) -> int:
        """Start `argv` as `name` and return its pid; without `argv`, start `name` again as last time.

        `env` is the child's whole environment (None: inherit ours). A `one_shot` command is meant to end
        (see `wait`): its exit is not reported as unexpected.
        """
        with self._state:
            child = self._children.get(name)
            if child is not None and child.process is not None and not child.exited.is_set():
                raise RuntimeError(f"{name} is already running (pid {child.process.pid})")
            if argv is None:
                if child is None:
                    raise KeyError(f"{name} was never started; give its argv")
            else:
                lines = child.lines if child is not None else collections.deque(maxlen=self._max_lines)
                child = _Child(
                    name=name,
                    argv=list(argv),
                    env=dict(env) if env is not None else None,
                    cwd=Path(cwd) if cwd is not None else None,
                    lines=lines,
                )
                self._children[name] = child
            assert child is not None
            child.exited = threading.Event()
            # A one-shot command ending is what we want, not a crash.
            child.expected_exit = one_shot
            self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])
            # Own session and group: signals from the terminal reach only us, and stop() can kill
            # whatever the child spawned along with it.
            process = subprocess.Popen(  # noqa: S603 - callers pass argv lists, no shell is involved
                child.argv,
                env=child.env,
                cwd=child.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            child.process = process
            pump = threading.Thread(target=self._pump, args=(child, process), name=f"pump-{name}", daemon=True)
            # The waiter gets this run's event and pump: a restart replaces the ones on `child`.
            waiter = threading.Thread(
                target=self._wait, args=(child, process, child.exited, pump), name=f"wait-{name}", daemon=True
            )
            child.pump, child.waiter = pump, waiter
            pump.start()
            waiter.start()
            return process.pid

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 120.0,
    ) -> int:
        """Run `argv` as `name` to completion (its output joins the combined log) and return its exit code.

        Raises TimeoutError after killing it if it takes longer than `timeout` seconds.
        """
        self.start(name, argv, env=env, cwd=cwd, one_shot=True)
        return self.wait(name, timeout)

    def wait(self, name: str, timeout: float) -> int:
        """Wait for `name` to end and return its exit code; after `timeout` s stop it and raise TimeoutError."""
        child = self._children[name]
        if not child.exited.wait(timeout):
            self.stop(name)
            raise TimeoutError(f"{name} did not finish within {timeout:.0f} s")
        self._join_pump(child)
        assert child.process is not None
        assert child.process.returncode is not None
        return child.process.returncode

    def stop(self, name: str, timeout: float = 15.0) -> int | None:
        """SIGTERM `name`'s process group, SIGKILL it after `timeout` s; returns the exit code (None if never run)."""
        child = self._children.get(name)
        if child is None or child.process is None:
            return None
        process = child.process
        child.expected_exit = True
        if not child.exited.is_set():
            _signal_group(process.pid, signal.SIGTERM)
            if not child.exited.wait(timeout):
                _signal_group(process.pid, signal.SIGKILL)
                child.exited.wait(timeout)
        self._join_pump(child)
        return process.returncode

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop every child at once (SIGTERM to all, then wait, then SIGKILL what is left)."""
        running = [c for c in self._children.values() if c.process is not None and not c.exited.is_set()]
        for child in running:
            child.expected_exit = True
            assert child.process is not None
            _signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in running:
            child.exited.wait(max(0.0, deadline - time.monotonic()))
        for child in list(self._children.values()):
            self.stop(child.name, timeout=timeout)

    def close(self) -> None:
        """Stop all children and close the log file."""
        self.stop_all()
        with self._write_lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ state

    @property
    def names(self) -> list[str]:
        return list(self._children)

    def is_running(self, name: str) -> bool:
        child = self._children.get(name)
        return child is not None and child.process is not None and not child.exited.is_set()

    def pid(self, name: str) -> int | None:
        child = self._children.get(name)
        return child.process.pid if child is not None and child.process is not None else None

    def returncode(self, name: str) -> int | None:
        """Exit code of `name`'s last run, None while it runs or if it never ran."""
        child = self._children.get(name)
        if child is None or child.process is None or not child.exited.is_set():
            return None
        return child.process.returncode

    @property
    def unexpected_exits(self) -> list[ChildExit]:
        """Every unexpected exit so far, oldest first."""
        with self._state:
            return list(self._unexpected)

    def wait_for_unexpected_exit(self, timeout: float) -> ChildExit | None:
        """The next unexpected exit not returned before, waiting up to `timeout` s for one."""
        with self._state:
            self._state.wait_for(lambda: bool(self._unseen), timeout)
            return self._unseen.popleft() if self._unseen else None

    # ------------------------------------------------------------------ output

    def lines(self, name: str) -> list[str]:
        """The last lines `name` wrote (across restarts), without prefix."""
        child = self._children.get(name)
        if child is None:
            return []
        with self._write_lock:
            return list(child.lines)

    def logs(self, name: str) -> str:
        return "\n".join(self.lines(name))

    def tail(self, name: str, lines: int = 40) -> str:
        return "\n".join(self.lines(name)[-lines:])

    def wait_for_line(self, name: str, text: str, timeout: float) -> str:
        """The first kept line of `name` containing `text`, waiting up to `timeout` s for it to appear."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines(name):
                if text in line:
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} wrote no line containing {text!r} within {timeout:.0f} s")
            time.sleep(0.05)

    def write(self, name: str, line: str) -> None:
        """Add a line under `name`'s prefix to the combined output (the launcher's own messages)."""
        self._emit(name, line, keep=None)

    def _emit(self, name: str, line: str, keep: collections.deque[str] | None) -> None:
        label = f"{name:<{self._name_width}} |"
        with self._write_lock:
            if keep is not None:
                keep.append(line)
            if self._log is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._log.write(f"{label} {line}\n")
                    self._log.flush()
            if self._output is not None:
                if self._color:
                    label = f"\033[{self._colours.get(name, '1')}m{label}{_RESET}"
                # A closed or broken terminal must not kill the pump and block the child on a full pipe.
                with contextlib.suppress(OSError, ValueError):
                    self._output.write(f"{label} {line}\n")
                    self._output.flush()

    def _pump(self, child: _Child, process: subprocess.Popen[bytes]) -> None:
        stream = process.stdout
        assert stream is not None
        with stream:
            for raw in iter(stream.readline, b""):
                self._emit(child.name, raw.decode("utf-8", errors="replace").rstrip("\r\n"), keep=child.lines)

    def _wait(
        self, child: _Child, process: subprocess.Popen[bytes], exited: threading.Event, pump: threading.Thread
    ) -> None:
        # Wait without reaping: while the leader is a zombie its pid (= the group id) cannot be reused, so
        # killing what it left behind in its group cannot hit an unrelated process.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        _signal_group(process.pid, signal.SIGKILL)
        code = process.wait()
        with self._state:
            exited.set()
            unexpected = not child.expected_exit
            if unexpected:
                event = ChildExit(child.name, code)
                self._unexpected.append(event)
                self._unseen.append(event)
            self._state.notify_all()
        if unexpected:
            # Let the last words of the child reach the log before the verdict.
            pump.join(timeout=1.0)
            self.write(child.name, f"*** exited unexpectedly with code {code}")
            if self._on_unexpected_exit is not None:
                self._on_unexpected_exit(ChildExit(child.name, code))

    def _join_pump(self, child: _Child, timeout: float = 5.0) -> None:
        if child.pump is not None and child.pump is not threading.current_thread():
            child.pump.join(timeout)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
