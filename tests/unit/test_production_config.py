"""Production refuses every unsafe gateway and secret setting, naming it; the configuration table and
.env.example stay in step with the code."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from libs.common.config import AnalysisSettings, AuthSettings, GatewaySettings
from libs.common.config_doc import PROCESSES, render_markdown

ROOT = Path(__file__).resolve().parents[2]

# A gateway configuration production accepts; each test spoils one setting.
SAFE_GATEWAY = {
    "ENVIRONMENT": "production",
    "DATABASE_URL": "postgresql://db/repolens",
    "NATS_URL": "nats://nats:4222",
    "REDIS_URL": "redis://redis:6379/0",
    "ALLOWED_HOSTS": '["api.example.com"]',
    "SERVICE_TOKEN": "g" * 40,
}


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("REDIS_", "CORS_", "ALLOWED_", "TRUSTED_", "DEBUG", "RATE_LIMIT_")):
            monkeypatch.delenv(name)
    for name, value in SAFE_GATEWAY.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def test_the_safe_gateway_configuration_starts(production: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings()
    assert settings.is_production
    assert settings.redis_url


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("REDIS_URL", None, "REDIS_URL"),
        ("DEBUG", "true", "DEBUG"),
        ("CORS_ORIGINS", '["*"]', "CORS_ORIGINS"),
        ("ALLOWED_HOSTS", '["*"]', "ALLOWED_HOSTS"),
        ("ALLOWED_HOSTS", "[]", "ALLOWED_HOSTS"),
        ("TRUSTED_PROXIES", '["*"]', "TRUSTED_PROXIES"),
        ("NATS_URL", None, "NATS_URL"),
    ],
)
def test_production_refuses_each_unsafe_gateway_setting_by_name(
    production: pytest.MonkeyPatch, name: str, value: str | None, named: str
) -> None:
    if value is None:
        production.delenv(name)
    else:
        production.setenv(name, value)
    with pytest.raises(ValidationError, match="refusing to start in production") as caught:
        GatewaySettings()
    assert named in str(caught.value)


def test_wildcard_cors_with_credentials_is_refused_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "development")
    monkeypatch.setenv("CORS_ORIGINS", '["*"]')
    monkeypatch.setenv("CORS_ALLOW_CREDENTIALS", "true")
    with pytest.raises(ValidationError, match="CORS_ALLOW_CREDENTIALS"):
        GatewaySettings()


def test_rate_limits_must_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RATE_LIMIT_LOGIN_USERNAME", "five a minute")
    with pytest.raises(ValidationError, match="rate_limit_login_username"):
        GatewaySettings()
    monkeypatch.setenv("RATE_LIMIT_LOGIN_USERNAME", "3 per 10 seconds; 20/hour")
    assert len(GatewaySettings().rate_limit_login_username.split(";")) == 2


def _production_auth(monkeypatch: pytest.MonkeyPatch, key: bytes) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/repolens")
    monkeypatch.setenv("NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("AUTH_MASTER_KEY", base64.b64encode(key).decode())
    monkeypatch.setenv("INTERNAL_SERVICE_TOKENS", '{"gateway": "' + "g" * 40 + '"}')


def test_production_auth_and_gateway_refuse_the_development_gateway_credential(
    monkeypatch: pytest.MonkeyPatch, production: pytest.MonkeyPatch
) -> None:
    _production_auth(monkeypatch, os.urandom(32))
    monkeypatch.delenv("INTERNAL_SERVICE_TOKENS")
    with pytest.raises(ValidationError, match=r"INTERNAL_SERVICE_TOKENS\[gateway\] is the development default"):
        AuthSettings()
    monkeypatch.delenv("SERVICE_TOKEN")
    with pytest.raises(ValidationError, match="SERVICE_TOKEN is missing or the development default"):
        GatewaySettings()


def test_a_master_key_that_is_not_random_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _production_auth(monkeypatch, b"a" * 32)
    with pytest.raises(ValidationError, match="AUTH_MASTER_KEY is not random"):
        AuthSettings()
    _production_auth(monkeypatch, os.urandom(32))
    assert AuthSettings().is_production


def test_a_short_service_token_is_refused_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/repolens")
    monkeypatch.setenv("NATS_URL", "nats://nats:4222")
    monkeypatch.setenv("SERVICE_TOKEN", "hunter2")
    monkeypatch.setenv("INTERNAL_SERVICE_TOKENS", '{"gateway": "' + "g" * 40 + '"}')
    with pytest.raises(ValidationError) as caught:
        AnalysisSettings()
    assert "SERVICE_TOKEN is shorter than 32 characters" in str(caught.value)
    monkeypatch.delenv("SERVICE_TOKEN")
    with pytest.raises(ValidationError) as caught:
        AnalysisSettings()
    # The specific check names it; the generic one does not repeat it.
    assert str(caught.value).count("SERVICE_TOKEN") == 1


def test_a_production_gateway_process_refuses_to_start_naming_every_unsafe_setting(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REDIS_", "CORS_", "DEBUG"))}
    env.update(SAFE_GATEWAY)
    env.pop("REDIS_URL")
    env.update({"DEBUG": "true", "CORS_ORIGINS": '["*"]', "HTTP_PORT": "0"})
    finished = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode != 0
    for name in ("REDIS_URL", "DEBUG", "CORS_ORIGINS"):
        assert name in finished.stderr, finished.stderr[-2000:]


def test_the_configuration_table_is_fresh() -> None:
    """Regenerate with `make config-doc` after changing a setting."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == render_markdown()


def test_every_setting_says_what_it_does() -> None:
    for settings_class in PROCESSES.values():
        for name, info in settings_class.model_fields.items():
            assert info.description, f"{settings_class.__name__}.{name} has no description"


def test_env_example_holds_no_secret_value() -> None:
    secrets = {
        name.upper()
        for settings_class in PROCESSES.values()
        for name, info in settings_class.model_fields.items()
        if "SecretStr" in str(info.annotation)
    }
    assert {"AUTH_MASTER_KEY", "TENANTS_MASTER_KEY", "SERVICE_TOKEN", "INTERNAL_SERVICE_TOKENS"} <= secrets
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, _, value = line.partition("=")
        assert name not in secrets, f"{name} has a value in .env.example"
        assert "@" not in value.split("#")[0], f"{name} carries credentials in .env.example"
