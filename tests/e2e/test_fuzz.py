"""The whole public API under schemathesis: every operation, generated requests valid and invalid, every check on.

The schema is the gateway's own OpenAPI document; the requests go to the running stack as a user who owns a
repository and a succeeded analysis.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import CheckContext, Response
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from gateway.app import create_app
from libs.common.config import GatewaySettings
from libs.devstack.stack import Stack
from tests.e2e.analysis_repos import git_repository
from tests.e2e.people import Person, expect, ready_for_analysis, register

# Ending every session of the fuzzing user would leave the rest of the run without a token: tests/e2e/test_sessions.py
# covers it.
SKIPPED = {"/api/v2/auth/logout-all"}
SCHEMA = schemathesis.openapi.from_dict(create_app(GatewaySettings()).openapi()).exclude(path=sorted(SKIPPED))
EXAMPLES = 30  # per operation at most: over 1,000 cases in all (the last test counts them)
CASES: dict[str, int] = {}
load_all_checks()
EVERY_CHECK: list[Any] = list(CHECKS.get_all())


@pytest.fixture(scope="module")
def owner(stack: Stack) -> Iterator[Person]:
    with httpx.Client(base_url=stack.gateway_url, timeout=15) as client:
        person = ready_for_analysis(register(client))
        root = Path(tempfile.mkdtemp(prefix="repolens-fuzz-"))
        source = git_repository(root, {"main.py": "def f():\n    return 1\n"})
        repository = expect(person.post("/api/v2/repositories", json={"name": "fuzzed", "url": str(source)}), 201)
        analysis = expect(person.post(f"/api/v2/repositories/{repository['id']}/analyses", json={}), 202)
        deadline = time.monotonic() + 60
        while expect(person.get(f"/api/v2/analyses/{analysis['id']}"), 200)["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield person


# Accepted deviations, each with its reason: the service refuses these schema-valid requests, by rules a schema
# cannot state.
DEVIATIONS = {
    "ERR_REPO_003": "a repository URL names a host the tenant's and the deployment's allow-lists must both hold: "
    "settings, not syntax (the field's description says so)",
    "ERR_REPO_004": "git's rules for ref names need look-ahead, which the schema's patterns do not share across "
    "validators (the field's description states them)",
}


@schemathesis.check
def positive_data_acceptance_but_settings(
    ctx: CheckContext, response: Response, case: schemathesis.Case[Any]
) -> bool | None:
    """`positive_data_acceptance`, but for the refusals listed in DEVIATIONS."""
    if response.status_code == 422:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            if response.json()["error"]["code"] in DEVIATIONS:
                return True
    return positive_data_acceptance(ctx, response, case)


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
    derandomize=True,
)
def test_every_operation_holds_to_its_schema(case: schemathesis.Case[Any], stack: Stack, owner: Person) -> None:
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    case.call_and_validate(
        base_url=stack.gateway_url,
        headers=owner.headers,
        timeout=15,
        checks=[*EVERY_CHECK, positive_data_acceptance_but_settings],  # every check on
        excluded_checks=[positive_data_acceptance],
    )


def test_the_fuzzing_ran_over_a_thousand_cases() -> None:
    """Runs after the fuzzing (pytest keeps a module's order): every operation was called, over 1,000 times in all."""
    assert set(CASES) == {result.ok().label for result in SCHEMA.get_all_operations() if isinstance(result, Ok)}, (
        sorted(CASES)
    )
    print(f"{sum(CASES.values())} cases over {len(CASES)} operations")
    assert sum(CASES.values()) >= 1000, CASES
