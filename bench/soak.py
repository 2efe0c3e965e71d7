"""Soak: minutes of a mixed load on the whole stack, counting every answer and watching each process's memory.

    python bench/soak.py --minutes 10                      # make run's defaults
    python bench/soak.py --minutes 30 --workers 6 --warmup-s 120 --production-like

The stack starts as in bench/read_path.py (embedded PostgreSQL and NATS, Valkey with --production-like). Once the
gateway and the worker (whose engine processes take a while) are ready, asyncio tasks sharing one httpx client run:

- onboarding, about once a second: register a new user, log in, `GET /api/v2/repositories` until its tenant's
  schema (which comes by event) answers 200, and add a repository from a local git checkout;
- a login of the known user whose token is the oldest, about once a second (no token of the generator expires);
- `--workers` readers, back to back: `GET /api/v2/auth/me`, `GET /api/v2/repositories`, `GET /api/v2/analyses/{id}`;
- an analysis about every 3 s (`POST /api/v2/repositories/{id}/analyses`); of every three, one is cancelled at once
  and one is followed by a cancel of an earlier analysis (`POST /api/v2/analyses/{id}/cancel`).

Every answer is counted by kind and status. Errors are transport errors and timeouts, 5xx, and any status not
expected of its kind; expected and not errors: 404 while a new tenant's schema is on its way (`new tenant`), and
409 cancelling an analysis that had finished (`cancel`).

Limits raised, all from one address as the generator is: RATE_LIMIT_API (per user; the readers would pass 600 a
minute), RATE_LIMIT_REGISTER and RATE_LIMIT_LOGIN_ADDRESS (per client address, 5 a minute; about 60 registrations
and 120 logins go by per minute). RATE_LIMIT_LOGIN_USERNAME stays: it counts failed logins (and those in flight),
and the generator's logins succeed, one at a time. The tenant quotas (TENANT_MAX_*) are far above what one user
gets here.

Every --sample-s seconds the RSS of each process is read (VmRSS, the process plus its children: the worker's engine
processes, the gateway's own when it runs several). After warm-up means the median of the first three samples after
--warmup-s, at the end the median of the last three (a passing `git clone` child is not growth); growth is the end
over after warm-up.

Exits 0 when no answer was an error, no process exited, and every process grew less than 10 % after warm-up, else 1.
A benchmark prints; the threshold is its verdict, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stack_on_embedded import UNLIMITED, embedded_stack, git_checkout  # noqa: E402
from libs.devstack.procfs import rss_bytes  # noqa: E402
from libs.devstack.stack import SERVICES, Stack  # noqa: E402

PASSWORD = "soak-benchmark-pass"  # noqa: S105 # the generated users' password
# Statuses each kind of call may answer without being an error.
EXPECTED: dict[str, frozenset[int]] = {
    "register": frozenset({201}),
    "login": frozenset({200}),
    "new tenant": frozenset({200, 404}),  # 404: the tenant's schema has not arrived yet
    "create repository": frozenset({201}),
    "me": frozenset({200}),
    "repositories": frozenset({200}),
    "analysis": frozenset({200}),
    "start analysis": frozenset({202}),
    "cancel": frozenset({202, 409}),  # 409: it had finished
}
MAX_USERS = 100  # users the generator keeps; each gets a fresh token every ~MAX_USERS s, well within 15 minutes
MAX_ANALYSES = 10  # analyses kept per user for reads and cancels
SCHEMA_WAIT_S = 30.0
MAX_GROWTH_PERCENT = 10.0
MAX_ERRORS_SHOWN = 20
PROGRESS_S = 30.0


@dataclass
class User:
    name: str
    headers: dict[str, str]
    token_at: float
    repository_id: str = ""
    analyses: list[str] = field(default_factory=list)


class Load:
    """The generator: its tasks, what they were answered, and the memory samples."""

    def __init__(self, client: httpx.AsyncClient, stack: Stack, checkout: Path, *, seconds: float) -> None:
        self.client = client
        self.stack = stack
        self.checkout = checkout
        self.started = time.monotonic()
        self.stop_at = self.started + seconds
        self.rng = random.Random()  # a load mix, not a secret
        self.users: deque[User] = deque(maxlen=MAX_USERS)
        self.statuses: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[str] = Counter()
        self.first_errors: list[str] = []
        self.rss: dict[str, list[tuple[float, int]]] = {name: [] for name in SERVICES}
        self.analyses_started = 0
        self.recent: deque[tuple[User, str]] = deque(maxlen=MAX_ANALYSES)  # the last analyses started, with their user

    @property
    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    def _count(self, kind: str, status: str, problem: str | None = None) -> None:
        self.statuses[(kind, status)] += 1
        if problem is not None:
            self._error(kind, problem)

    def _error(self, kind: str, problem: str) -> None:
        self.errors[kind] += 1
        if len(self.first_errors) < MAX_ERRORS_SHOWN:
            self.first_errors.append(f"{time.monotonic() - self.started:6.1f} s  {kind}: {problem}")

    async def _call(
        self, kind: str, method: str, path: str, *, user: User | None = None, body: dict[str, Any] | None = None
    ) -> httpx.Response | None:
        """The answer when its status is expected of `kind`, else None (and an error counted)."""
        try:
            response = await self.client.request(method, path, json=body, headers=user.headers if user else None)
        except httpx.HTTPError as exc:  # connection refused or reset, timeouts, broken answers
            self._count(kind, type(exc).__name__, f"{method} {path}: {type(exc).__name__}: {exc}")
            return None
        status = response.status_code
        if status in EXPECTED[kind]:
            self._count(kind, str(status))
            return response
        self._count(kind, str(status), f"{method} {path} -> {status} {response.text[:300]}")
        return None

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while self.running:
            began = time.monotonic()
            await step()
            await asyncio.sleep(max(0.0, min(interval_s - (time.monotonic() - began), self.stop_at - time.monotonic())))

    async def _token(self, name: str) -> dict[str, str] | None:
        login = {"username": name, "password": PASSWORD}
        answer = await self._call("login", "POST", "/api/v2/auth/login", body=login)
        return {"Authorization": f"Bearer {answer.json()['access_token']}"} if answer else None

    async def onboard(self) -> None:
        name = "soak" + uuid.uuid4().hex[:12]
        register = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        if not await self._call("register", "POST", "/api/v2/auth/register", body=register):
            return
        if (headers := await self._token(name)) is None:
            return
        user = User(name, headers, time.monotonic())
        if not await self._schema_arrived(user):
            return
        repository = {"name": "soak", "url": str(self.checkout)}
        if created := await self._call("create repository", "POST", "/api/v2/repositories", user=user, body=repository):
            user.repository_id = created.json()["id"]
            self.users.append(user)

    async def _schema_arrived(self, user: User) -> bool:
        """Whether the new tenant's repositories answered 200 (404 until its schema arrives) within SCHEMA_WAIT_S."""
        deadline = time.monotonic() + SCHEMA_WAIT_S
        while (listed := await self._call("new tenant", "GET", "/api/v2/repositories", user=user)) is not None:
            if listed.status_code == 200:
                return True
            if time.monotonic() > deadline:
                self._error("new tenant", f"no schema after {SCHEMA_WAIT_S:.0f} s")
                return False
            await asyncio.sleep(0.2)
        return False

    async def relogin(self) -> None:
        if not self.users:
            return
        user = min(self.users, key=lambda each: each.token_at)
        if (headers := await self._token(user.name)) is not None:
            user.headers, user.token_at = headers, time.monotonic()

    async def read(self) -> None:
        while self.running:
            if not self.users:
                await asyncio.sleep(0.1)
                continue
            user = self.rng.choice(self.users)
            roll = self.rng.random()
            if roll < 0.4:
                await self._call("me", "GET", "/api/v2/auth/me", user=user)
            elif roll < 0.7 or not user.analyses:
                await self._call("repositories", "GET", "/api/v2/repositories", user=user)
            else:
                await self._call("analysis", "GET", f"/api/v2/analyses/{self.rng.choice(user.analyses)}", user=user)

    async def analyse(self) -> None:
        if not self.users:
            return
        user = self.rng.choice(self.users)
        path = f"/api/v2/repositories/{user.repository_id}/analyses"
        if (started := await self._call("start analysis", "POST", path, user=user, body={})) is None:
            return
        self.analyses_started += 1
        analysis_id = started.json()["id"]
        user.analyses = [*user.analyses[-(MAX_ANALYSES - 1) :], analysis_id]
        earlier = list(self.recent)
        self.recent.append((user, analysis_id))
        if self.analyses_started % 3 == 1:  # at once: queued, most likely (202)
            owner, target = user, analysis_id
        elif self.analyses_started % 3 == 2 and earlier:  # an earlier one, of any user: finished, most likely (409)
            owner, target = self.rng.choice(earlier)
        else:
            return
        await self._call("cancel", "POST", f"/api/v2/analyses/{target}/cancel", user=owner)

    async def sample(self, every_s: float) -> None:
        next_progress = PROGRESS_S
        while True:
            at = time.monotonic() - self.started
            for name in SERVICES:
                if (pid := self.stack.supervisor.pid(name)) is not None:
                    self.rss[name].append((at, rss_bytes(pid) // 1024))
            if at >= next_progress:
                next_progress += PROGRESS_S
                memory = ", ".join(f"{name} {series[-1][1] / 1024:.0f}" for name, series in self.rss.items() if series)
                print(
                    f"{at:6.0f} s  {self.statuses.total()} requests, {self.errors.total()} errors, "
                    f"{len(self.users)} users; RSS MiB {memory}",
                    flush=True,
                )
            if not self.running:
                return
            await asyncio.sleep(max(0.0, min(every_s, self.stop_at - time.monotonic())))

    async def run(self, *, workers: int, sample_s: float) -> float:
        """Every task until the time is up (calls in flight then finish); the seconds the load lasted."""
        await asyncio.gather(
            self.sample(sample_s),
            self._every(1.0, self.onboard),
            self._every(1.0, self.relogin),
            self._every(3.0, self.analyse),
            *(self.read() for _ in range(workers)),
        )
        return time.monotonic() - self.started


@dataclass
class Memory:
    name: str
    after_warmup_kib: float
    end_kib: float
    max_kib: int

    @property
    def growth_percent(self) -> float:
        return (self.end_kib - self.after_warmup_kib) * 100 / self.after_warmup_kib


def _memory(rss: dict[str, list[tuple[float, int]]], warmup_s: float) -> list[Memory]:
    table = []
    for name, series in rss.items():
        after = [kib for at, kib in series if at >= warmup_s and kib > 0]
        if after:
            start, end = statistics.median(after[:3]), statistics.median(after[-3:])
            table.append(Memory(name, start, end, max(kib for _, kib in series)))
    return table


async def _soak(stack: Stack, checkout: Path, args: argparse.Namespace) -> tuple[Load, float]:
    limits = httpx.Limits(max_connections=args.workers + 8, keepalive_expiry=2.0)  # below the gateway's 5 s keep-alive
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(base_url=stack.gateway_url, limits=limits, timeout=timeout) as client:
        load = Load(client, stack, checkout, seconds=args.minutes * 60)
        seconds = await load.run(workers=args.workers, sample_s=args.sample_s)
    return load, seconds


def _report(load: Load, seconds: float, args: argparse.Namespace, exits: list[str]) -> bool:
    """Prints the results; whether the soak passed."""
    mode = "production-like" if args.production_like else "make run defaults"
    print(f"\n{mode}: {seconds:.0f} s ({args.warmup_s:.0f} s warm-up), {args.workers} readers\n")
    print(f"{'kind':<18} {'requests':>9} {'req/s':>7} {'errors':>7}  statuses")
    for kind in EXPECTED:
        counts = {status: n for (each, status), n in sorted(load.statuses.items()) if each == kind}
        total = sum(counts.values())
        statuses = ", ".join(f"{status} x{n}" for status, n in counts.items())
        print(f"{kind:<18} {total:>9} {total / seconds:>7.1f} {load.errors[kind]:>7}  {statuses}")
    total, errors = load.statuses.total(), load.errors.total()
    print(f"{'total':<18} {total:>9} {total / seconds:>7.1f} {errors:>7}")
    for line in load.first_errors:
        print(f"  error at {line}")
    memory = _memory(load.rss, args.warmup_s)
    print(f"\n{'RSS MiB':<18} {'after warm-up':>13} {'end':>8} {'max':>8} {'growth':>8}")
    for row in memory:
        print(
            f"{row.name:<18} {row.after_warmup_kib / 1024:>13.1f} {row.end_kib / 1024:>8.1f} "
            f"{row.max_kib / 1024:>8.1f} {row.growth_percent:>7.1f}%"
        )
    problems = [f"{errors} errors"] if errors else []
    problems += exits
    problems += [
        f"{row.name} grew {row.growth_percent:.1f}%" for row in memory if row.growth_percent >= MAX_GROWTH_PERCENT
    ]
    missing = [name for name in SERVICES if name not in {row.name for row in memory}]
    problems += [f"no memory sample of {name} after warm-up" for name in missing]
    print(f"\n{'FAIL: ' + '; '.join(problems) if problems else 'PASS'}")
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load lasts, warm-up included")
    parser.add_argument("--workers", type=int, default=4, help="readers sending back to back")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="memory growth counts from here")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--production-like", action="store_true", help="JSON logs, Redis limits, shipped sampling")
    parser.add_argument("--log", type=Path, help="keep the stack's combined log here (default: removed)")
    args = parser.parse_args()
    if args.workers < 1 or args.sample_s <= 0 or not 0 <= args.warmup_s < args.minutes * 60:
        parser.error("needs --workers >= 1, --sample-s > 0 and a warm-up shorter than the run")
    with tempfile.TemporaryDirectory(prefix="repolens-soak-") as tmp:
        root = Path(tmp)
        log = args.log.resolve() if args.log else root / "stack.log"
        env = {"RATE_LIMIT_API": UNLIMITED, "RATE_LIMIT_REGISTER": UNLIMITED, "RATE_LIMIT_LOGIN_ADDRESS": UNLIMITED}
        with embedded_stack(root, production_like=args.production_like, env=env, log=log) as stack:
            load, seconds = asyncio.run(_soak(stack, git_checkout(root), args))
            exits = [f"{each.name} exited (code {each.returncode})" for each in stack.unexpected_exits]
    passed = _report(load, seconds, args, exits)
    if args.log:
        print(f"stack log: {log}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
