"""The badge drawing and the badge token, apart from the stack."""

from __future__ import annotations

import uuid

import pytest

from gateway.routes.badges import Shown, _short, svg
from services.analysis import badges, github

KEY = b"k" * 32
TENANT, REPOSITORY = uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("count", "shown"), [(0, "0"), (999, "999"), (1000, "1.0k"), (12_345, "12.3k"), (4_500_000, "4.5M")]
)
def test_large_counts_are_shortened(count: int, shown: str) -> None:
    assert _short(count) == shown


def test_the_same_badge_is_the_same_bytes() -> None:
    first = svg(Shown("quality gate", "passed", "#4C1"))
    svg(Shown("findings", "3", "#DFB317"))  # anybadge counts its mask ids up per process
    assert svg(Shown("quality gate", "passed", "#4C1")) == first
    assert b"passed" in first
    assert b'fill="#4C1"' in first


def test_a_badge_loads_nothing_from_elsewhere() -> None:
    drawn = svg(Shown("quality gate", "passed", "#4C1")).decode()
    assert drawn.replace('xmlns="http://www.w3.org/2000/svg"', "").count("http") == 0


def test_a_badge_token_is_per_repository_and_generation_and_never_the_webhook_secret() -> None:
    token = badges.badge_token(KEY, tenant_id=TENANT, repository_id=REPOSITORY, generation=1)
    assert token.startswith("rlb_")
    assert len(token) == 36
    assert badges.token_matches(token, token)
    others = {
        badges.badge_token(KEY, tenant_id=TENANT, repository_id=REPOSITORY, generation=2),
        badges.badge_token(KEY, tenant_id=uuid.uuid4(), repository_id=REPOSITORY, generation=1),
        badges.badge_token(KEY, tenant_id=TENANT, repository_id=uuid.uuid4(), generation=1),
        badges.badge_token(b"o" * 32, tenant_id=TENANT, repository_id=REPOSITORY, generation=1),
    }
    assert token not in others
    assert len(others) == 4
    secret = github.webhook_secret(KEY, tenant_id=TENANT, repository_id=REPOSITORY, generation=1)
    assert token.removeprefix("rlb_") not in secret
    assert not badges.token_matches(token, token[:-1] + "?")
    assert not badges.token_matches(token, "rlb_\udcff")  # what a query string may hold
