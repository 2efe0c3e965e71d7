"""Tenant rules: permissions, masking, validation, envelope encryption."""

import uuid
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from libs.common.errors import AppError
from services.tenants import secrets
from services.tenants.domain import (
    ROLES,
    QualityGate,
    allowed,
    ensure_can_change,
    ensure_can_grant,
    mask,
    render_permissions,
    validate_hosts,
    validate_quality_gate,
    validate_secret,
    validate_slug,
)

ROOT = Path(__file__).resolve().parents[2]


def test_permissions_document_is_current() -> None:
    committed = (ROOT / "docs" / "permissions.md").read_text(encoding="utf-8")
    assert committed == render_permissions(), "docs/permissions.md is stale: run `make permissions-doc`"


def test_only_owners_grant_or_touch_ownership() -> None:
    ensure_can_grant("owner", "owner")
    ensure_can_grant("admin", "admin")
    for role in ("admin", "member", "viewer"):
        with pytest.raises(AppError):
            ensure_can_grant(role, "owner")
    with pytest.raises(AppError):
        ensure_can_change("admin", "owner", action="members.change_role")
    with pytest.raises(AppError):
        ensure_can_change("admin", "owner", action="members.remove")
    ensure_can_change("admin", "member", action="members.remove")
    ensure_can_change("viewer", "viewer", action="members.remove", actor_is_target=True)
    with pytest.raises(AppError):
        ensure_can_change("viewer", "viewer", action="members.change_role", actor_is_target=True)


def test_every_role_reads_and_only_owner_deletes() -> None:
    assert all(allowed(role, "tenant.read") for role in ROLES)
    assert [role for role in ROLES if allowed(role, "tenant.delete")] == ["owner"]


@pytest.mark.parametrize(
    ("secret", "masked"),
    [
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz1234", "sk-ant-...1234"),
        ("ghp_0123456789abcdefghijklmnopqrstuvwxyzABCD", "ghp_...ABCD"),
        ("sk-proj-zzzzzzzzzzzzzzzzzzzzzzzzzzzz9876", "sk-proj-...9876"),
        ("short", "..."),
        ("plainsecretvalue1234", "...1234"),
    ],
)
def test_masks_keep_the_vendor_prefix_and_last_four_only(secret: str, masked: str) -> None:
    assert mask(secret) == masked


@pytest.mark.parametrize("slug", ["ab", "-acme", "acme-", "Acme", "a" * 41, "ac_me", "~alice"])
def test_bad_slugs(slug: str) -> None:
    with pytest.raises(AppError):
        validate_slug(slug)


def test_hosts_are_plain_lowercase_names() -> None:
    assert validate_hosts(["GitHub.com", "gitlab.example.org", "github.com"]) == ("github.com", "gitlab.example.org")
    for bad in ("https://github.com", "github.com:443", "localhost", "github.com/path", ""):
        with pytest.raises(AppError):
            validate_hosts([bad])


def test_quality_gate_bounds_and_secret_shape() -> None:
    assert validate_quality_gate(QualityGate()) == QualityGate()
    with pytest.raises(AppError):
        validate_quality_gate(QualityGate(max_function_complexity=0))
    with pytest.raises(AppError) as caught:
        validate_secret("github_token", "has a space")
    assert "has a space" not in str(caught.value.details)


def test_envelope_encryption_binds_tenant_field_and_master_key() -> None:
    master, other_master = bytes(32), bytes(range(32))
    tenant, other_tenant = uuid.uuid4(), uuid.uuid4()
    data_key, wrapped = secrets.new_data_key(master, tenant)
    sealed = secrets.encrypt(data_key, tenant_id=tenant, field="github_token", value="ghp_secret")
    assert b"ghp_secret" not in sealed
    assert secrets.decrypt(data_key, tenant_id=tenant, field="github_token", sealed=sealed) == "ghp_secret"
    with pytest.raises(InvalidTag):
        secrets.decrypt(data_key, tenant_id=other_tenant, field="github_token", sealed=sealed)
    with pytest.raises(InvalidTag):
        secrets.decrypt(data_key, tenant_id=tenant, field="openai_api_key", sealed=sealed)
    with pytest.raises(InvalidTag):
        secrets.unwrap(wrapped, other_master, tenant)
    rewrapped = secrets.rewrap(wrapped, old_master_key=master, new_master_key=other_master, tenant_id=tenant)
    assert secrets.unwrap(rewrapped, other_master, tenant) == data_key
