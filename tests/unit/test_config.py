"""Settings: production refuses defaults, secrets come from files, URLs are normalised."""

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from libs.common.config import AuthSettings, CommonSettings, GatewaySettings, TenantsSettings


def test_production_refuses_the_development_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/repolens")
    monkeypatch.setenv("NATS_URL", "nats://nats:4222")
    monkeypatch.delenv("AUTH_MASTER_KEY", raising=False)
    with pytest.raises(ValidationError, match="AUTH_MASTER_KEY"):
        AuthSettings()


def test_production_refuses_missing_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("NATS_URL", raising=False)
    with pytest.raises(ValidationError, match="DATABASE_URL is not set") as caught:
        AuthSettings()
    assert "NATS_URL is not set" in str(caught.value)
    # The gateway has no database: only NATS is missing for it.
    with pytest.raises(ValidationError, match="NATS_URL is not set") as caught:
        GatewaySettings()
    assert "DATABASE_URL" not in str(caught.value)


def test_production_accepts_a_real_key_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    key_file = tmp_path / "master-key"
    key_file.write_text(key + "\n", encoding="utf-8")
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/repolens")
    monkeypatch.setenv("NATS_URL", "nats://nats:4222")
    monkeypatch.delenv("AUTH_MASTER_KEY", raising=False)
    monkeypatch.setenv("AUTH_MASTER_KEY_FILE", str(key_file))
    monkeypatch.setenv("INTERNAL_SERVICE_TOKENS", '{"gateway": "' + "g" * 40 + '"}')
    settings = AuthSettings()
    assert settings.master_key == bytes(range(32))
    assert settings.json_logs is True


def test_master_key_must_be_32_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(ValidationError, match="32 bytes"):
        AuthSettings()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h:5432/d", "postgresql+psycopg://u@h:5432/d"),
        ("postgres://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@/d?host=/tmp", "postgresql+psycopg://u@/d?host=/tmp"),
    ],
)
def test_database_url_gets_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch, given: str, expected: str) -> None:
    monkeypatch.setenv("DATABASE_URL", given)
    assert CommonSettings().sqlalchemy_url == expected


def test_other_database_schemes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://u@h/d")
    with pytest.raises(ValueError, match="postgresql"):
        _ = CommonSettings().sqlalchemy_url


def test_production_refuses_tenants_defaults(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/repolens")
    monkeypatch.setenv("NATS_URL", "nats://nats:4222")
    monkeypatch.delenv("TENANTS_MASTER_KEY", raising=False)
    monkeypatch.delenv("INTERNAL_SERVICE_TOKENS", raising=False)
    with pytest.raises(ValidationError) as caught:
        TenantsSettings()
    assert "TENANTS_MASTER_KEY" in str(caught.value)
    assert "INTERNAL_SERVICE_TOKENS[analysis]" in str(caught.value)
    monkeypatch.setenv("TENANTS_MASTER_KEY", base64.b64encode(bytes(range(32))).decode())
    monkeypatch.setenv("INTERNAL_SERVICE_TOKENS", '{"analysis": "' + "s" * 40 + '"}')
    assert TenantsSettings().internal_service_tokens["analysis"].get_secret_value() == "s" * 40


def test_a_mapping_setting_is_read_as_json_from_its_secret_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("INTERNAL_SERVICE_TOKENS", raising=False)
    secret = tmp_path / "internal-service-tokens"
    secret.write_text('{"analysis": "' + "f" * 40 + '", "reports": "' + "g" * 40 + '"}\n')
    monkeypatch.setenv("INTERNAL_SERVICE_TOKENS_FILE", str(secret))
    tokens = TenantsSettings().internal_service_tokens
    assert {name: token.get_secret_value() for name, token in tokens.items()} == {
        "analysis": "f" * 40,
        "reports": "g" * 40,
    }
    secret.write_text("not json")
    with pytest.raises(SettingsError, match="INTERNAL_SERVICE_TOKENS_FILE does not hold JSON") as caught:
        TenantsSettings()
    assert "not json" not in str(caught.value)


def test_production_refuses_local_repositories_and_the_development_service_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libs.common.config import AnalysisSettings

    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/repolens")
    monkeypatch.setenv("NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("ALLOW_LOCAL_REPOSITORIES", "true")
    monkeypatch.delenv("SERVICE_TOKEN", raising=False)
    with pytest.raises(ValidationError) as caught:
        AnalysisSettings()
    assert "ALLOW_LOCAL_REPOSITORIES" in str(caught.value)
    assert "SERVICE_TOKEN" in str(caught.value)
