"""Shared by the deployment tests: kustomize builds, the settings each process would get, the values it serves on."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr, TypeAdapter
from pydantic_settings import BaseSettings

from libs.common.config import (
    AnalysisSettings,
    AnalysisWorkerSettings,
    AuthSettings,
    CommonSettings,
    GatewaySettings,
    GrpcServiceSettings,
    TenantsSettings,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBECTL = Path(sys.executable).with_name("kubectl")

# Every overlay that is applied as a whole, and the migration kustomization applied before it.
OVERLAYS = {name: K8S / "overlays" / name for name in ("dev", "prod", "prod-blue-green")}
MIGRATIONS = {name: K8S / "overlays" / name / "migrate" for name in ("dev", "prod")}
# prod-blue-green takes its migrations (and everything but the gateway) from prod.
MIGRATION_OF = {"dev": "dev", "prod": "prod", "prod-blue-green": "prod"}

# The settings class each component's process builds in its main.
SETTINGS: dict[str, type[CommonSettings]] = {
    "gateway": GatewaySettings,
    "auth": AuthSettings,
    "tenants": TenantsSettings,
    "analysis": AnalysisSettings,
    "worker": AnalysisWorkerSettings,
}
GRPC_SERVICES = ("auth", "tenants", "analysis")
COMPONENTS = tuple(SETTINGS)
Obj = dict[str, Any]


@functools.cache
def build(path: Path) -> tuple[Obj, ...]:
    """`kubectl kustomize path`, parsed; fails the test with kustomize's own message."""
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(obj: Obj) -> str:
    labels: dict[str, str] = obj["metadata"].get("labels", {})
    return labels["app.kubernetes.io/component"]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def config_map(objects: tuple[Obj, ...]) -> dict[str, str]:
    """The data of the one generated repolens-config ConfigMap."""
    maps = [obj for obj in of_kind(objects, "ConfigMap") if obj["metadata"]["name"].startswith("repolens-config")]
    assert len(maps) == 1, [obj["metadata"]["name"] for obj in maps]
    data: dict[str, str] = maps[0]["data"]
    return data


def container_env(objects: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """Literal environment of a container: its ConfigMap (envFrom), then its own `value:` entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(named(objects, "ConfigMap", ref)["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
    return env


def settings_field_default(cls: type[BaseSettings], name: str) -> Any:
    field = cls.model_fields[name]
    return field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]


def effective(cls: type[BaseSettings], name: str, env: Mapping[str, str]) -> Any:
    """The value the process would use for setting `name`: the environment's, parsed as the class does, else its
    default. Only this process's environment counts, never the test runner's."""
    field = cls.model_fields[name]
    raw = env.get(name.upper())
    if raw is None:
        return settings_field_default(cls, name)
    value: Any = raw
    if typing.get_origin(field.annotation) in (list, dict):
        value = json.loads(raw)
    annotation: Any = field.annotation
    return TypeAdapter(annotation).validate_python(value)


def secret_settings() -> set[str]:
    """Names (upper case) of every setting typed as a secret, in any settings class."""
    names = set()
    for cls in (CommonSettings, GrpcServiceSettings, AuthSettings, TenantsSettings, AnalysisSettings, GatewaySettings):
        for name, field in cls.model_fields.items():
            if "SecretStr" in repr(field.annotation) or field.annotation is SecretStr:
                names.add(name.upper())
    return names


# Connection URLs that may carry a password: never written with one.
CREDENTIAL_URLS = {"DATABASE_URL", "REDIS_URL", "NATS_URL"}
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@", re.IGNORECASE)


def workloads(objects: tuple[Obj, ...]) -> Iterator[Obj]:
    """Every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj


def image_tag(image: str) -> tuple[str, str]:
    """(name, tag) of an image reference; the tag is "" when there is none."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        repository, _, tag = name.rpartition(":")
        return repository, tag
    return name, "@" + digest if digest else ""
