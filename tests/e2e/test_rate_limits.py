"""Rate limits and the failed-login lock through real gateway processes, two of them sharing one Redis.

The extra gateways run in front of the session stack's services with the default limits (the session's own
gateway has relaxed ones). They trust 127.0.0.1 as a proxy, so a test picks its client's address with
X-Forwarded-For, the way a load balancer would tell the gateway.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.devstack.stack import Stack
from tests.e2e.gateways import Gateways
from tests.e2e.people import PASSWORD, error_code, expect, register, unique

SECURITY_HEADERS = ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy")
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def gateways(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    running = Gateways(stack, tmp_path_factory.mktemp("gateways") / "gateways.log")
    try:
        yield running
    finally:
        running.close()


def _shared_env(redis_url: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "RATE_LIMIT_KEY_PREFIX": "e2e-" + uuid.uuid4().hex[:8],  # the session's Redis is shared
        "TRUSTED_PROXIES": '["127.0.0.1"]',
        "CORS_ORIGINS": f'["{ORIGIN}"]',
    }


@pytest.fixture(scope="module")
def pair(gateways: Gateways, redis_url: str) -> tuple[str, str]:
    """Two gateways with the default limits, counting in the same Redis."""
    env = _shared_env(redis_url)
    first, second = gateways.start(env, env)
    return first, second


@pytest.fixture(scope="module")
def quick(gateways: Gateways, redis_url: str) -> str:
    """A gateway whose username lock is short, to watch it lift."""
    return gateways.start({**_shared_env(redis_url), "RATE_LIMIT_LOGIN_USERNAME": "3 per 8 seconds"})[0]


@pytest.fixture(scope="module")
def lock_only(gateways: Gateways, redis_url: str) -> str:
    """A gateway with the default username lock and a relaxed per-address limit, so only the lock refuses."""
    return gateways.start({**_shared_env(redis_url), "RATE_LIMIT_LOGIN_ADDRESS": "1000/minute"})[0]


@pytest.fixture(scope="module")
def untrusting(gateways: Gateways) -> str:
    """A gateway that trusts no proxy (the default), counting in memory, with a small API allowance."""
    return gateways.start({"REDIS_URL": "", "TRUSTED_PROXIES": "[]", "RATE_LIMIT_API": "3/minute"})[0]


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    """The session gateway (relaxed limits): for setting people up."""
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as http:
        yield http


def _login(base_url: str, username: str, password: str, *, address: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": address} if address else {}
    return httpx.post(
        f"{base_url}/api/v2/auth/login", json={"username": username, "password": password}, headers=headers, timeout=15
    )


def _address() -> str:
    """A client address no other test uses (TEST-NET-2), so per-address counts never meet."""
    return f"198.51.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


def _password_checks(stack: Stack) -> float:
    """Wrong passwords the auth service has checked so far (its own counter: the gateway cannot fake it)."""
    response = httpx.get(stack.metrics_url("auth"), timeout=5)
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "repolens_logins_total" and sample.labels.get("result") == "failure"
    )


def _assert_limited(response: httpx.Response, code: str) -> int:
    assert response.status_code == 429, response.text
    assert error_code(response) == code
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 3600
    assert response.json()["error"]["details"] == {"retry_after_s": str(retry_after)}
    for name in SECURITY_HEADERS:
        assert name in response.headers, name
    return retry_after


def test_the_sixth_failed_login_is_refused_from_two_addresses_across_two_gateways(
    pair: tuple[str, str], client: httpx.Client
) -> None:
    first, second = pair
    user = register(client)
    one, two = _address(), _address()
    for gateway, address in ((first, one), (first, one), (second, two), (first, one), (second, two)):
        failed = _login(gateway, user.username, "wrong-password", address=address)
        assert failed.status_code == 401
        assert error_code(failed) == "ERR_AUTH_001"
    _assert_limited(_login(second, user.username, "wrong-password", address=two), "ERR_RATE_002")
    # Locked for everyone who never logged this user in, the right password included.
    _assert_limited(_login(first, user.username, PASSWORD, address=one), "ERR_RATE_002")
    _assert_limited(_login(first, user.username, PASSWORD, address=_address()), "ERR_RATE_002")


def test_a_lock_looks_the_same_for_a_username_that_does_not_exist(pair: tuple[str, str], client: httpx.Client) -> None:
    second = pair[1]
    known, missing = register(client).username, unique("nobody")
    answers = {}
    for username in (known, missing):
        for attempt in range(5):
            failed = _login(pair[attempt % 2], username, "wrong-password", address=_address())
            assert failed.status_code == 401
        answers[username] = _login(second, username, "wrong-password", address=_address())
    for response in answers.values():
        _assert_limited(response, "ERR_RATE_002")
    bodies = [
        {k: v for k, v in r.json()["error"].items() if k not in ("request_id", "details")} for r in answers.values()
    ]
    assert bodies[0] == bodies[1]
    assert {frozenset(r.headers) - {"date"} for r in answers.values()} == {frozenset(answers[known].headers) - {"date"}}


def test_the_lock_lifts_by_itself_and_spares_the_users_own_address(quick: str, client: httpx.Client) -> None:
    user = register(client)
    home = _address()
    expect(_login(quick, user.username, PASSWORD, address=home), 200)  # the real user, from home
    for _ in range(3):
        assert _login(quick, user.username, "guess", address=_address()).status_code == 401
    retry_after = _assert_limited(_login(quick, user.username, PASSWORD, address=_address()), "ERR_RATE_002")
    assert retry_after <= 8
    # While the lock holds, the user still gets in from an address that logged them in before.
    expect(_login(quick, user.username, PASSWORD, address=home), 200)
    time.sleep(retry_after + 0.3)
    expect(_login(quick, user.username, PASSWORD, address=_address()), 200)


def test_concurrent_wrong_passwords_reach_the_password_check_at_most_five_times(
    lock_only: str, client: httpx.Client, stack: Stack
) -> None:
    user = register(client)
    home, attacker = _address(), _address()
    expect(_login(lock_only, user.username, PASSWORD, address=home), 200)  # the real user, before the attack
    attempts = 50
    start = threading.Barrier(attempts)

    def guess(_: int) -> httpx.Response:
        start.wait()
        return _login(lock_only, user.username, "wrong-password", address=attacker)

    before = _password_checks(stack)
    with ThreadPoolExecutor(attempts) as pool:
        answers = list(pool.map(guess, range(attempts)))
    checked = _password_checks(stack) - before
    assert checked <= 5, f"{checked:.0f} of {attempts} concurrent guesses reached the password check"
    assert Counter(r.status_code for r in answers) == {401: 5, 429: attempts - 5}
    for refused in (r for r in answers if r.status_code == 429):
        _assert_limited(refused, "ERR_RATE_002")
    # Locked for a new address, the right password included; the user's own address still gets in.
    _assert_limited(_login(lock_only, user.username, PASSWORD, address=_address()), "ERR_RATE_002")
    expect(_login(lock_only, user.username, PASSWORD, address=home), 200)


def test_login_attempts_per_address_are_limited(pair: tuple[str, str]) -> None:
    address = _address()
    for attempt in range(5):
        assert _login(pair[attempt % 2], unique("x"), "wrong-password", address=address).status_code == 401
    _assert_limited(_login(pair[0], unique("x"), "wrong-password", address=address), "ERR_RATE_001")
    assert _login(pair[0], unique("x"), "wrong-password", address=_address()).status_code == 401


def test_forwarded_for_from_an_untrusted_peer_is_ignored(untrusting: str) -> None:
    """Without TRUSTED_PROXIES, a client choosing a new X-Forwarded-For per attempt is still one address."""
    for _ in range(5):
        assert _login(untrusting, unique("x"), "wrong-password", address=_address()).status_code == 401
    _assert_limited(_login(untrusting, unique("x"), "wrong-password", address=_address()), "ERR_RATE_001")


def test_the_api_limit_is_per_user_not_per_token(untrusting: str, client: httpx.Client) -> None:
    person = register(client)
    with httpx.Client(base_url=untrusting, timeout=15) as http:
        for _ in range(3):
            expect(http.get("/api/v2/auth/me", headers=person.headers), 200)
        _assert_limited(http.get("/api/v2/auth/me", headers=person.headers), "ERR_RATE_001")
        fresh = person.login()  # through the session gateway: a new session and token
        _assert_limited(http.get("/api/v2/auth/me", headers=fresh.headers), "ERR_RATE_001")
        other = register(client)
        expect(http.get("/api/v2/auth/me", headers=other.headers), 200)


def test_registration_is_limited_per_address(pair: tuple[str, str]) -> None:
    address = _address()
    for attempt in range(5):
        body = {"username": unique(), "email": f"{unique()}@example.com", "password": PASSWORD, "full_name": "R"}
        response = httpx.post(
            f"{pair[attempt % 2]}/api/v2/auth/register", json=body, headers={"X-Forwarded-For": address}, timeout=15
        )
        assert response.status_code == 201, response.text
    body = {"username": unique(), "email": f"{unique()}@example.com", "password": PASSWORD, "full_name": "R"}
    refused = httpx.post(f"{pair[0]}/api/v2/auth/register", json=body, headers={"X-Forwarded-For": address}, timeout=15)
    _assert_limited(refused, "ERR_RATE_001")


def test_cors_grants_the_listed_origin_and_no_other(pair: tuple[str, str]) -> None:
    granted = httpx.get(f"{pair[0]}/health/live", headers={"Origin": ORIGIN})
    assert granted.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.get(f"{pair[0]}/health/live", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in refused.headers
    preflight = httpx.options(
        f"{pair[1]}/api/v2/auth/login",
        headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_every_answer_of_a_real_gateway_carries_the_security_headers(client: httpx.Client) -> None:
    person = register(client)
    answers = [
        client.get("/health/live"),
        client.get("/api/v2/auth/me", headers=person.headers),
        client.get("/api/v2/auth/me"),
        client.get("/api/v2/nothing-here"),
        client.post("/api/v2/auth/login", json={"username": ""}),
        client.post(
            "/api/v2/auth/login",
            content=b'{"username": "' + b"a" * 2_000_000 + b'"}',
            headers={"Content-Type": "application/json"},
        ),
        client.get("/docs"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 401, 404, 422, 413, 200]
    assert error_code(answers[5]) == "ERR_REQUEST_003"
    for response in answers:
        for name in SECURITY_HEADERS:
            assert name in response.headers, (response.request.url, name)
    assert "strict-transport-security" not in answers[0].headers  # test environment: no HSTS


def test_a_wrong_password_and_an_unknown_user_take_the_same_time(client: httpx.Client) -> None:
    """Both check a password hash (a dummy one for the unknown user): timing does not reveal who exists."""
    username = register(client).username
    known: list[float] = []
    unknown: list[float] = []
    for _ in range(10):
        for name, times in ((username, known), (unique("nobody"), unknown)):
            started = time.perf_counter()
            assert client.post("/api/v2/auth/login", json={"username": name, "password": "wrong"}).status_code == 401
            times.append(time.perf_counter() - started)
    fast, slow = sorted((statistics.median(known), statistics.median(unknown)))
    # Skipping the hash for unknown users would make them several times faster than a wrong password.
    assert fast / slow > 0.5, (known, unknown)
