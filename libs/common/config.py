"""Settings per process, read from the environment (and `*_FILE` secret files) once, in main."""

from __future__ import annotations

import base64
import binascii
import os
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

# Development-only master key (32 zero-ish bytes, base64). Production refuses it.
DEVELOPMENT_MASTER_KEY = base64.b64encode(b"repolens-development-master-key!").decode()
DEVELOPMENT_WEBHOOK_KEY = base64.b64encode(b"repolens-development-webhook-key").decode()


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class _SecretFileSource(PydanticBaseSettingsSource):
    """Reads `NAME_FILE` (a path) for any field, the way Kubernetes secrets are mounted; a field holding a mapping
    or a list (`INTERNAL_SERVICE_TOKENS`) reads the file as JSON, as it would read the variable."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        path = os.environ.get(f"{field_name.upper()}_FILE")
        if not path:
            return None, field_name, False
        with open(path, encoding="utf-8") as handle:
            value: Any = handle.read().strip()
        if self.field_is_complex(field):
            try:
                value = self.decode_complex_value(field_name, field, value)
            except ValueError as exc:  # the message names the file, never its content (a secret)
                raise SettingsError(f"{field_name.upper()}_FILE does not hold JSON") from exc
        return value, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class CommonSettings(BaseSettings):
    """What every process needs: environment, logging, PostgreSQL, NATS, token checks."""

    uses_database: ClassVar[bool] = True  # production insists on a DATABASE_URL
    uses_nats: ClassVar[bool] = True  # and on a NATS_URL

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    environment: Environment = Field(default=Environment.DEVELOPMENT, description="development, test or production")
    log_level: str = Field(default="INFO", description="Lowest log level written")
    log_json: bool | None = Field(default=None, description="JSON log lines; default: on in production only")
    gc_gen0_threshold: int = Field(
        default=20000,
        ge=0,
        le=1_000_000,
        description="Allocations between collections of the youngest generation once started (0: CPython's 700)",
    )

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/repolens", description="PostgreSQL URL (libpq form)"
    )
    db_pool_size: int = Field(default=10, ge=1, le=200, description="Connections kept open per process")
    db_max_overflow: int = Field(default=5, ge=0, le=200, description="Extra connections allowed under load")
    db_read_pool_size: int = Field(
        default=4, ge=1, le=200, description="Connections of the hot reads' own pool (psycopg, prepared statements)"
    )
    db_pool_timeout_s: float = Field(default=5.0, gt=0, description="Wait for a free connection before failing")
    db_statement_timeout_ms: int = Field(default=5000, ge=100, description="PostgreSQL statement_timeout")
    db_connect_timeout_s: int = Field(default=5, ge=1, description="Connect timeout for one attempt")
    # Database operations (docs/operations.md): connection life, abandoned transactions, slow statements.
    db_pool_recycle_s: int = Field(
        default=1800,
        ge=0,
        description="Reopen pooled connections older than this (0: never): none lingers long after a failover",
    )
    db_pool_pre_ping: bool = Field(
        default=True, description="Test a pooled connection before use, so a restarted server costs no failed call"
    )
    db_idle_in_transaction_timeout_ms: int = Field(
        default=60_000,
        ge=0,
        description="PostgreSQL idle_in_transaction_session_timeout: ends a session idle inside a transaction (0: off)",
    )
    db_slow_query_ms: int = Field(
        default=200, ge=0, description="Statements slower than this are logged (db.slow_query) and counted (0: off)"
    )

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL(s), comma separated")
    nats_connect_timeout_s: float = Field(default=3.0, gt=0, description="Connect timeout for one attempt")
    nats_request_timeout_s: float = Field(default=5.0, gt=0, description="JetStream publish and API timeout")

    startup_timeout_s: float = Field(default=60.0, gt=0, description="Give up waiting for PostgreSQL/NATS after")

    jwt_issuer: str = Field(default="repolens-auth", description="iss claim of access tokens")
    jwt_audience: str = Field(default="repolens", description="aud claim of access tokens")
    access_token_ttl_s: int = Field(default=900, ge=60, le=86400, description="Lifetime of an access token")
    jwks_cache_ttl_s: float = Field(default=300.0, gt=0, description="How long fetched public keys are trusted")
    jwks_refresh_min_interval_s: float = Field(
        default=2.0, ge=0, description="Least time between two key fetches for unknown kids"
    )

    grpc_deadline_s: float = Field(default=5.0, gt=0, description="Deadline of every outgoing gRPC call")

    # Tracing (libs/common/tracing.py), under OpenTelemetry's own names; error reporting (error_reporting.py).
    otel_sdk_disabled: bool = Field(default=False, description="No tracing at all: no trace context, no trace ids")
    otel_exporter_otlp_endpoint: str = Field(
        default="", description="OTLP/HTTP collector base URL, spans are posted to its /v1/traces (empty: no export)"
    )
    otel_traces_sampler_arg: float = Field(
        default=0.1, ge=0, le=1, description="Share of new traces recorded and exported (parent-based ratio)"
    )
    # Not a SecretStr: a DSN only lets one send events (Sentry puts it in browser code); it is scrubbed anyway.
    sentry_dsn: str = Field(default="", description="Sentry DSN for unexpected errors; empty: no error reporting")

    # Prometheus: each process serves /metrics on a port of its own, never on the public API's port.
    metrics_host: str = Field(default="127.0.0.1", description="Address the /metrics server binds")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Port of /metrics (0: no metrics server)")
    metrics_sample_interval_s: float = Field(
        default=5.0, gt=0, description="How often outbox backlog and consumer lag are read for /metrics"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFileSource(settings_cls), dotenv_settings)

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def json_logs(self) -> bool:
        return self.is_production if self.log_json is None else self.log_json

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
        url = self.database_url
        for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        raise ValueError("DATABASE_URL must be a postgresql:// URL")

    @model_validator(mode="after")
    def _production_needs_real_values(self) -> Self:
        if self.is_production:
            problems = self.production_problems()
            # The generic secret checks name a setting only when no specific check has already named it.
            problems += [text for name, text in self.secret_problems() if not any(name in p for p in problems)]
            if problems:
                raise ValueError("refusing to start in production: " + "; ".join(problems))
        return self

    def secret_problems(self) -> list[tuple[str, str]]:
        """(setting, reason) for every secret left at its development default or too weak to be one.

        Generic so that a secret added later is covered without anyone remembering to add a check.
        """
        problems = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if not isinstance(value, SecretStr):
                continue
            setting, secret = name.upper(), value.get_secret_value()
            if isinstance(field.default, SecretStr) and secret == field.default.get_secret_value():
                problems.append((setting, f"{setting} is missing or the development default"))
            elif name.endswith("master_key"):
                # base64 of 32 random bytes has about 30 distinct byte values; a typed-in phrase far fewer.
                if len(set(decode_master_key(secret))) < 16:
                    problems.append((setting, f"{setting} is not random (generate 32 random bytes)"))
            elif len(secret) < 32:
                problems.append((setting, f"{setting} is shorter than 32 characters"))
        return problems

    def production_problems(self) -> list[str]:
        """Reasons this configuration is unfit for production; subclasses add their own."""
        problems = []
        if self.uses_database and "DATABASE_URL" not in os.environ and "DATABASE_URL_FILE" not in os.environ:
            problems.append("DATABASE_URL is not set")
        if self.uses_nats and "NATS_URL" not in os.environ and "NATS_URL_FILE" not in os.environ:
            problems.append("NATS_URL is not set")
        return problems


class MigrationSettings(CommonSettings):
    """What a service's `migrate` command reads: the database, logging and tracing; none of the service's keys or
    tokens, so the migration Job is given none of them."""

    uses_nats: ClassVar[bool] = False

    migration_parallelism: int = Field(default=4, ge=1, le=32, description="Tenant schemas migrated at once")


class GrpcServiceSettings(CommonSettings):
    """A gRPC service process."""

    uses_nats: ClassVar[bool] = True  # ahead of MigrationSettings in AnalysisSettings' bases

    grpc_host: str = Field(default="127.0.0.1", description="Address the gRPC server binds")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    grpc_max_concurrent_rpcs: int = Field(default=256, ge=1, description="RPCs served at once before queueing")
    grpc_slow_call_ms: float = Field(
        default=1000.0, gt=0, description="Calls served slower than this are logged as rpc.slow (others at debug)"
    )
    shutdown_grace_s: float = Field(default=10.0, ge=0, description="Time in-flight RPCs get on SIGTERM")
    grpc_max_connection_age_s: float = Field(
        default=300.0, ge=1, description="Clients are made to reconnect (and find new pods) after this long"
    )
    outbox_poll_interval_s: float = Field(default=0.5, gt=0, description="Outbox relay poll when idle")
    consumer_max_deliver: int = Field(default=5, ge=1, description="Deliveries of one event before dead-letter")
    consumer_ack_wait_s: float = Field(default=30.0, gt=0, description="Redeliver an unacked event after")
    auth_grpc_target: str = Field(default="127.0.0.1:50051", description="Auth service address (public keys)")

    @property
    def service_credentials(self) -> dict[str, str]:
        """Credentials of the services allowed to call this one's internal RPCs (none here)."""
        return {}


class AcceptsServiceCalls(GrpcServiceSettings):
    """A service some of whose RPCs only other services may call: auth (the gateway), tenants (analysis)."""

    internal_service_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Service name to credential (JSON) of each service allowed to call the internal RPCs "
        "(auth: gateway; tenants: analysis)",
    )

    @property
    def service_credentials(self) -> dict[str, str]:
        return {name: token.get_secret_value() for name, token in self.internal_service_tokens.items()}

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        for name, token in self.internal_service_tokens.items():
            if token.get_secret_value() in DEVELOPMENT_SERVICE_TOKENS or len(token.get_secret_value()) < 32:
                problems.append(f"INTERNAL_SERVICE_TOKENS[{name}] is the development default or shorter than 32")
        return problems


DEVELOPMENT_SERVICE_TOKEN = "development-analysis-service-token"  # noqa: S105 # nosec B105 # refused in production
DEVELOPMENT_GATEWAY_TOKEN = "development-gateway-service-token"  # noqa: S105 # nosec B105 # refused in production
DEVELOPMENT_SERVICE_TOKENS = (DEVELOPMENT_SERVICE_TOKEN, DEVELOPMENT_GATEWAY_TOKEN)


def decode_master_key(value: str) -> bytes:
    """A master key is 32 bytes, written as base64."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("master key must be base64") from exc
    if len(raw) != 32:
        raise ValueError("master key must be 32 bytes (base64 of 32 random bytes)")
    return raw


def _master_key_shape(value: SecretStr) -> SecretStr:
    decode_master_key(value.get_secret_value())
    return value


# A master key setting: refused at start-up unless it is base64 of 32 bytes.
MasterKey = Annotated[SecretStr, AfterValidator(_master_key_shape)]


def _rate_limit_shape(value: str) -> str:
    from limits import parse_many  # only the gateway has rate limits; the services need not import it

    parse_many(value)
    return value


# A rate limit in the `limits` notation ("5/minute", "5/minute;20/hour"); refused at start-up unless it parses.
RateLimit = Annotated[str, AfterValidator(_rate_limit_shape)]


class AuthSettings(AcceptsServiceCalls):
    """The auth service."""

    grpc_port: int = Field(default=50051, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    auth_master_key: MasterKey = Field(
        default=SecretStr(DEVELOPMENT_MASTER_KEY), description="base64 of 32 bytes; encrypts signing keys"
    )
    refresh_token_ttl_s: int = Field(
        default=30 * 86400, ge=60, description="Absolute lifetime of a login: its sessions and refresh tokens"
    )
    refresh_reuse_grace_s: float = Field(
        default=10.0,
        ge=0,
        le=60,
        description="A spent refresh token used again within this is a concurrent refresh (same session), later a "
        "theft (the login ends)",
    )
    key_reload_interval_s: float = Field(default=30.0, gt=0, description="How often signing keys are re-read")
    pat_max_days: int = Field(
        default=366,
        ge=1,
        le=366,
        description="Longest lifetime a personal access token may be given, in days (a year at most)",
    )
    argon2_time_cost: int = Field(default=2, ge=1, description="argon2id iterations (OWASP: 2)")
    argon2_memory_kib: int = Field(default=19456, ge=1024, description="argon2id memory in KiB (OWASP: 19 MiB)")
    argon2_parallelism: int = Field(default=1, ge=1, description="argon2id lanes (OWASP: 1)")
    internal_service_tokens: dict[str, SecretStr] = Field(
        default_factory=lambda: {"gateway": SecretStr(DEVELOPMENT_GATEWAY_TOKEN)},
        description="Service name to credential (JSON) of each service allowed to call the internal RPCs "
        "(auth: gateway; tenants: analysis)",
    )

    @property
    def master_key(self) -> bytes:
        return decode_master_key(self.auth_master_key.get_secret_value())

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if self.auth_master_key.get_secret_value() == DEVELOPMENT_MASTER_KEY:
            problems.append("AUTH_MASTER_KEY is missing or the development default")
        return problems


class TenantsSettings(AcceptsServiceCalls):
    """The tenants service."""

    grpc_port: int = Field(default=50052, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    tenants_master_key: MasterKey = Field(
        default=SecretStr(DEVELOPMENT_MASTER_KEY), description="base64 of 32 bytes; wraps the tenants' data keys"
    )
    invitation_ttl_s: int = Field(default=7 * 86400, ge=60, description="How long an invitation can be accepted")
    user_max_tenants: int = Field(
        default=20, ge=0, description="Organisations one user may own at once (the personal tenant is not counted)"
    )
    internal_service_tokens: dict[str, SecretStr] = Field(
        default_factory=lambda: {"analysis": SecretStr(DEVELOPMENT_SERVICE_TOKEN)},
        description="Service name to credential (JSON) of each service allowed to call the internal RPCs "
        "(auth: gateway; tenants: analysis)",
    )

    @property
    def master_key(self) -> bytes:
        return decode_master_key(self.tenants_master_key.get_secret_value())

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if self.tenants_master_key.get_secret_value() == DEVELOPMENT_MASTER_KEY:
            problems.append("TENANTS_MASTER_KEY is missing or the development default")
        return problems


class AnalysisSettings(AcceptsServiceCalls, MigrationSettings):
    """The analysis service and its workers."""

    grpc_port: int = Field(default=50053, ge=0, le=65535, description="gRPC port (0 picks a free one)")
    tenants_grpc_target: str = Field(default="127.0.0.1:50052", description="Tenants service address")
    service_token: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_SERVICE_TOKEN), description="This service's credential for internal RPCs"
    )
    allow_local_repositories: bool = Field(
        default=False, description="Accept local paths and file:// URLs (development only)"
    )
    repository_hosts: list[str] = Field(
        default_factory=lambda: ["github.com", "gitlab.com", "bitbucket.org"],
        description="Hosts workers may clone from; a tenant's allowed hosts are narrowed to these",
    )
    worker_concurrency: int = Field(default=2, ge=1, le=64, description="Analyses one worker process runs at once")
    # Quotas of each tenant (refused by the API past them) and its share of the workers (docs/architecture.md).
    tenant_max_repositories: int = Field(default=1000, ge=1, description="Repositories one tenant may have at once")
    tenant_max_queued_analyses: int = Field(
        default=100, ge=1, description="Analyses of one tenant queued or running at once"
    )
    tenant_max_analyses_per_hour: int = Field(
        default=600, ge=1, description="Analyses one tenant may queue in any hour (a rolling window)"
    )
    tenant_max_running_analyses: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Analyses of one tenant running at once across all workers; its other jobs wait, others' run",
    )
    max_attempts: int = Field(
        default=3, ge=1, le=10, description="Runs of one analysis (a worker crashed or stopped in it) before it fails"
    )
    job_max_deliveries: int = Field(
        default=1000,
        ge=2,
        le=100_000,
        description="Deliveries of one job (each hand-back counts: one every few seconds while its tenant's share is "
        "busy) before it is dead-lettered and its analysis fails",
    )
    job_ack_wait_s: float = Field(default=30.0, ge=2, description="A job is redelivered when silent this long")
    fetch_timeout_s: float = Field(default=300.0, gt=0, description="Time limit of one clone")
    max_repository_bytes: int = Field(default=500_000_000, ge=1_000_000, description="Size limit of one clone")
    churn_window_days: int = Field(default=365, ge=1, le=3650, description="History the churn and hotspots cover")
    churn_max_commits: int = Field(
        default=1000, ge=1, le=100_000, description="Commits of history fetched and read for churn, at most"
    )
    work_dir: str = Field(default="", description="Where clones go (default: the system temp dir)")
    engine_processes: int = Field(
        default=2, ge=0, le=64, description="Processes a worker runs the engine's per-file steps on (0: in-thread)"
    )
    health_stale_s: float = Field(
        default=30.0,
        gt=0,
        description="A worker whose event loop has not run for this long answers 503 on /health/live",
    )
    engine_cache_dir: str = Field(
        default="",
        description="Where a worker keeps what it measured of each file, by content, for later analyses (empty: off)",
    )
    engine_cache_max_entries: int = Field(
        default=200_000, ge=1000, le=100_000_000, description="Files the engine cache holds at most (about 3 KB each)"
    )
    # The LLM review. The base URLs share their names with the SDKs' own variables, so one setting points both
    # (a gateway or a regional endpoint); empty means the SDK's default.
    anthropic_base_url: str = Field(default="", description="Anthropic API base URL (default: the SDK's)")
    openai_base_url: str = Field(default="", description="OpenAI API base URL, /v1 included (default: the SDK's)")
    llm_timeout_s: float = Field(default=60.0, gt=0, le=600, description="Time limit of one request to the provider")
    llm_deadline_s: float = Field(
        default=150.0, gt=0, le=1800, description="Time limit of the whole review, retries and their waits included"
    )
    llm_max_retries: int = Field(default=1, ge=0, le=3, description="Retries of a failed request (429, 5xx, timeout)")
    llm_max_input_tokens: int = Field(
        default=8000, ge=500, le=200_000, description="Prompt budget per analysis (estimated conservatively)"
    )
    llm_max_output_tokens: int = Field(default=1024, ge=64, le=16_384, description="max_tokens of the review")
    llm_anthropic_model: str = Field(
        default="claude-sonnet-5-5", description="Model when the tenant names none (provider anthropic)"
    )
    llm_openai_model: str = Field(default="gpt-5.5", description="Model when the tenant names none (provider openai)")
    # GitHub: the webhooks that queue analyses (checked by the service) and the commit statuses (posted by workers).
    internal_service_tokens: dict[str, SecretStr] = Field(
        default_factory=lambda: {"gateway": SecretStr(DEVELOPMENT_GATEWAY_TOKEN)},
        description="Service name to credential (JSON) of each service allowed to call the internal RPCs "
        "(analysis: gateway, which hands it GitHub's webhooks)",
    )
    webhook_key: MasterKey | None = Field(
        default=SecretStr(DEVELOPMENT_WEBHOOK_KEY),
        description="base64 of 32 bytes; repositories' webhook secrets and badge tokens derive from it (none stored)",
    )
    github_api_url: str = Field(default="https://api.github.com", description="GitHub REST API, for commit statuses")
    github_timeout_s: float = Field(default=10.0, gt=0, le=60, description="Time limit of one call to GitHub")
    public_url: str = Field(
        default="http://localhost:8000", description="The API's public base URL: the links of commit statuses"
    )

    @property
    def webhook_key_bytes(self) -> bytes:
        return decode_master_key(self.webhook_key.get_secret_value()) if self.webhook_key is not None else b""

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if self.webhook_key is not None and self.webhook_key.get_secret_value() == DEVELOPMENT_WEBHOOK_KEY:
            problems.append("WEBHOOK_KEY is missing or the development default")
        if not self.github_api_url.startswith("https://"):
            problems.append("GITHUB_API_URL must be https: the tenants' GitHub tokens travel with every status")
        for name in ("anthropic_base_url", "openai_base_url"):
            if getattr(self, name) and not getattr(self, name).startswith("https://"):
                problems.append(f"{name.upper()} must be https: the tenants' API keys travel with every request")
        if self.allow_local_repositories:
            problems.append("ALLOW_LOCAL_REPOSITORIES must be off: tenants could read the server's disk")
        if self.service_token.get_secret_value() == DEVELOPMENT_SERVICE_TOKEN:
            problems.append("SERVICE_TOKEN is the development default")
        return problems


class AnalysisWorkerSettings(AnalysisSettings):
    """The analysis workers: the service's settings without what only the service holds. A worker verifies no
    webhook and takes no call, so it is given neither WEBHOOK_KEY nor the gateway's credential."""

    internal_service_tokens: dict[str, SecretStr] = Field(
        default_factory=dict, description="Not read by workers (they take no call)"
    )
    webhook_key: MasterKey | None = Field(default=None, description="Not read by workers (they verify no webhook)")


class GatewaySettings(CommonSettings):
    """The public HTTP gateway."""

    uses_database: ClassVar[bool] = False  # it forwards over gRPC: no database URL, so no credential to leak

    http_host: str = Field(default="127.0.0.1", description="Address the gateway binds")
    http_port: int = Field(default=8000, ge=0, le=65535, description="HTTP port")
    # One by default: on a machine whose cores the services share (make run, 2 cores), a second gateway process
    # bought no throughput in bench/read_path.py and doubled its p99. On a host of its own, 0 uses every core.
    gateway_workers: int = Field(
        default=1,
        ge=0,
        le=64,
        description="Gateway processes sharing the HTTP port (0: one per core); worker i serves /metrics on "
        "METRICS_PORT+i",
    )
    auth_grpc_target: str = Field(default="127.0.0.1:50051", description="Auth service address")
    tenants_grpc_target: str = Field(default="127.0.0.1:50052", description="Tenants service address")
    analysis_grpc_target: str = Field(default="127.0.0.1:50053", description="Analysis service address")
    service_token: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_GATEWAY_TOKEN),
        description="This gateway's credential for the auth service's register, login, refresh and logout",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body accepted")
    ready_check_timeout_s: float = Field(default=1.0, gt=0, description="Deadline of one downstream health check")
    debug: bool = Field(default=False, description="Tracebacks in 500 answers (development only)")

    access_log_sample_rate: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of fast successful requests written to the access log; errors and slow ones always are",
    )
    access_log_slow_ms: float = Field(
        default=1000.0, ge=0, description="Requests slower than this are always written to the access log"
    )

    # The HTTP edge (gateway/middleware.py).
    max_url_bytes: int = Field(default=8192, ge=256, description="Longest path plus query string accepted (414)")
    max_header_bytes: int = Field(default=16_384, ge=1024, description="Largest total of request headers (431)")
    max_headers: int = Field(default=100, ge=10, description="Most request headers accepted (431)")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["*"],
        description='Host header values served (JSON list; "*.example.com" matches subdomains); /health/* is exempt',
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Proxy addresses or CIDRs whose X-Forwarded-For/-Proto are believed (JSON list; empty: none)",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the API (JSON list; empty: no CORS)"
    )
    cors_allow_credentials: bool = Field(default=False, description="Let browsers send cookies to allowed origins")
    hsts_max_age_s: int = Field(default=63_072_000, ge=0, description="Strict-Transport-Security max-age (production)")
    http_keepalive_timeout_s: int = Field(default=5, ge=1, description="Idle keep-alive connections close after")
    http_graceful_shutdown_s: int = Field(default=10, ge=0, description="Time in-flight requests get on SIGTERM")
    http_limit_concurrency: int = Field(
        default=1000, ge=1, description="Connections and requests at once before answering 503"
    )
    http_backlog: int = Field(default=2048, ge=1, description="Pending TCP connections queued by the kernel")

    # Rate limits (gateway/ratelimit.py), in the `limits` notation: "5/minute", "5/minute;20/hour".
    redis_url: str = Field(
        default="", description="Redis/Valkey URL for rate-limit counters; empty: in this process's memory"
    )
    rate_limit_key_prefix: str = Field(default="repolens", description="Prefix of every rate-limit key in Redis")
    rate_limit_login_address: RateLimit = Field(default="5/minute", description="Login attempts per client address")
    rate_limit_login_username: RateLimit = Field(
        default="5/minute;20/hour;100/day",
        description="Failed logins per username before it is locked; each tier locks longer",
    )
    login_known_address_ttl_s: int = Field(
        default=30 * 86400,
        ge=0,
        description="An address that logged a user in stays exempt from that username's lock this long (0: never)",
    )
    rate_limit_register: RateLimit = Field(default="5/minute;30/hour", description="Registrations per client address")
    rate_limit_invitations: RateLimit = Field(
        default="10/minute", description="Invitation acceptances per user and per client address"
    )
    rate_limit_tokens: RateLimit = Field(default="30/minute", description="Refresh and logout calls per client address")
    rate_limit_api: RateLimit = Field(default="600/minute", description="Authenticated requests per user")
    rate_limit_flush_s: float = Field(
        default=0.2,
        gt=0,
        le=10,
        description="How often each gateway adds its API-limit counts to Redis and reads every gateway's back",
    )
    redis_timeout_s: float = Field(default=0.5, gt=0, description="Connect and reply timeout of one Redis call")

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> Self:
        if self.cors_allow_credentials and "*" in self.cors_origins:
            raise ValueError('CORS_ORIGINS "*" cannot be combined with CORS_ALLOW_CREDENTIALS')
        return self

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if not self.redis_url:
            problems.append("REDIS_URL is not set: rate limits would not hold across gateway processes")
        if self.debug:
            problems.append("DEBUG must be off: 500 answers would carry tracebacks")
        if "*" in self.cors_origins:
            problems.append('CORS_ORIGINS must list origins, not "*"')
        if "*" in self.allowed_hosts or not self.allowed_hosts:
            problems.append("ALLOWED_HOSTS must list the public host names")
        if "*" in self.trusted_proxies:
            problems.append('TRUSTED_PROXIES must not be "*": any client could choose its address')
        return problems
