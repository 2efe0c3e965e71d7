"""The personal access token format: prefix, random part, checksum, and the validation of a new token's request."""

from __future__ import annotations

import pytest

from libs.common import access_tokens
from libs.common.errors import AppError
from services.auth.domain import validate_access_token_request


def test_new_tokens_are_well_formed_and_distinct() -> None:
    tokens = {access_tokens.new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith("rlp_")
        assert len(token) == 40
        assert access_tokens.looks_like_token(token)


def test_any_changed_character_breaks_the_checksum() -> None:
    token = access_tokens.new_token()
    for position in range(len(access_tokens.PREFIX), len(token)):
        changed = token[:position] + ("a" if token[position] != "a" else "b") + token[position + 1 :]
        assert not access_tokens.looks_like_token(changed), position


@pytest.mark.parametrize("value", ["", "rlp_", "rlp_" + "a" * 36, "glpat-" + "a" * 36, "x" + access_tokens.new_token()])
def test_look_alikes_are_not_tokens(value: str) -> None:
    assert not access_tokens.looks_like_token(value)


def test_only_the_hash_identifies_a_token() -> None:
    token = access_tokens.new_token()
    assert access_tokens.token_hash(token) == access_tokens.token_hash(token)
    assert access_tokens.token_hash(token) != access_tokens.token_hash(access_tokens.new_token())
    assert token.encode() not in access_tokens.token_hash(token)


@pytest.mark.parametrize(
    ("name", "scopes", "days", "field"),
    [
        ("", ["analysis:read"], 1, "name"),
        ("x" * 101, ["analysis:read"], 1, "name"),
        ("tab\there", ["analysis:read"], 1, "name"),
        ("ok", [], 1, "scopes"),
        ("ok", ["analysis:read", "analysis:read"], 1, "scopes"),
        ("ok", ["tenant:admin"], 1, "scopes"),
        ("ok", ["analysis:read"], 0, "expires_in_days"),
        ("ok", ["analysis:read"], 31, "expires_in_days"),
    ],
)
def test_a_bad_request_names_its_field(name: str, scopes: list[str], days: int, field: str) -> None:
    with pytest.raises(AppError) as raised:
        validate_access_token_request(name=name, scopes=scopes, expires_in_days=days, max_days=30)
    assert raised.value.details == {"field": field, "reason": raised.value.details["reason"]}


def test_a_good_request_passes() -> None:
    validate_access_token_request(name="ci: main", scopes=list(access_tokens.SCOPES), expires_in_days=30, max_days=30)
