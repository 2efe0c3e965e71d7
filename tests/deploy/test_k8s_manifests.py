"""The Kubernetes manifests: every overlay builds, validates against the API schemas, and every workload follows the
rules (probes on the ports and paths the processes really serve, resources, security, budgets, autoscaling)."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError

from gateway.routes import health
from libs.common.config import CommonSettings, GatewaySettings, GrpcServiceSettings, MigrationSettings
from services.analysis.domain import JOBS_STREAM
from tests.deploy.manifests import (
    COMPONENTS,
    CREDENTIAL_URLS,
    GRPC_SERVICES,
    MIGRATION_OF,
    MIGRATIONS,
    OVERLAYS,
    ROOT,
    SETTINGS,
    URL_WITH_PASSWORD,
    Obj,
    build,
    component,
    config_map,
    container_env,
    effective,
    image_tag,
    named,
    of_kind,
    pod_spec,
    secret_settings,
    workloads,
)

KUBERNETES_VERSION = "1.37.0"
# Kinds the Kubernetes schemas cannot describe, each with the reason and the test that checks it instead.
NOT_IN_KUBERNETES_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "a KEDA CRD, not a Kubernetes API; checked by test_worker_scales_on_jobs",
}
ALL_BUILDS = {**OVERLAYS, **{f"{name}/migrate": path for name, path in MIGRATIONS.items()}}
NAMESPACES = {"dev": "repolens-dev", "prod": "repolens", "prod-blue-green": "repolens"}
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")


def deployments(objects: tuple[Obj, ...]) -> list[Obj]:
    return of_kind(objects, "Deployment")


def main_container(workload: Obj) -> Obj:
    containers: list[Obj] = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container per pod"
    return containers[0]


def container_port(container: Obj, port: int | str) -> int:
    """A probe's port (number or name) as a number, checked against the container's declared ports."""
    ports = {item["name"]: item["containerPort"] for item in container.get("ports", [])}
    if isinstance(port, str):
        assert port in ports, f"{container['name']}: probe names port {port!r}, not declared ({ports})"
        return int(ports[port])
    assert port in ports.values(), f"{container['name']}: probe port {port} is not a declared port ({ports})"
    return port


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def health_path(endpoint: Any) -> str:
    """The path the gateway serves `endpoint` on (gateway/routes/health.py), as routed."""
    for route in health.router.routes:
        if getattr(route, "endpoint", None) is endpoint:
            return str(getattr(route, "path", ""))
    raise AssertionError(f"{endpoint.__name__} is not routed")


def worker_drain_s() -> float:
    """How long a stopping worker waits for running analyses (services/analysis/worker.py)."""
    source = (ROOT / "services" / "analysis" / "worker.py").read_text(encoding="utf-8")
    found = re.search(r"await asyncio\.wait\(self\._running, timeout=([0-9.]+)\)", source)
    assert found, "the worker's drain wait moved: update worker_drain_s"
    return float(found.group(1))


# ---------------------------------------------------------------------------------------------------- build, schemas


@pytest.mark.parametrize("name", sorted(ALL_BUILDS))
def test_builds(name: str) -> None:
    objects = build(ALL_BUILDS[name])
    assert objects, f"{name} builds to nothing"
    namespaces = {obj["metadata"].get("namespace") for obj in objects if obj["kind"] != "Namespace"}
    assert namespaces == {NAMESPACES[name.split("/")[0]]}, f"{name}: every object in the overlay's namespace"
    assert [obj["metadata"]["name"] for obj in of_kind(objects, "Namespace")] == [NAMESPACES[name.split("/")[0]]]


@pytest.mark.parametrize("name", sorted(ALL_BUILDS))
def test_objects_validate_against_kubernetes_schemas(name: str) -> None:
    skipped = set()
    for obj in build(ALL_BUILDS[name]):
        key = (obj["apiVersion"], obj["kind"])
        if key in NOT_IN_KUBERNETES_SCHEMAS:
            skipped.add(key)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}") from None
    for key in skipped:  # the exemption must stay true: a kind with a schema is validated
        with pytest.raises(SchemaNotFoundError):
            kubernetes_validate.validate({"apiVersion": key[0], "kind": key[1]}, KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_a_mistake() -> None:
    deployment = json.loads(json.dumps(named(build(OVERLAYS["prod"]), "Deployment", "auth")))
    pod_spec(deployment)["containers"][0]["readinessProbe"]["grpc"]["prot"] = 50051
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------------- probes and ports


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_grpc_services_probe_their_own_grpc_port(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    for name in GRPC_SERVICES:
        deployment = named(objects, "Deployment", name)
        container = main_container(deployment)
        env = container_env(objects, container)
        port = effective(SETTINGS[name], "grpc_port", env)
        assert effective(SETTINGS[name], "grpc_host", env) == "0.0.0.0", f"{name}: kubelet must reach the port"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container[kind]
            assert "grpc" in probe, f"{name}.{kind}: the gRPC health protocol"
            assert container_port(container, probe["grpc"]["port"]) == port, f"{name}.{kind} port"
            assert probe["grpc"].get("service", "") == "", f"{name}.{kind}: the whole server's status"
        service = named(objects, "Service", name)
        assert selects(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        (service_port,) = service["spec"]["ports"]
        assert container_port(container, service_port["targetPort"]) == port


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_grpc_targets_name_the_services(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    config = config_map(objects)
    for name in GRPC_SERVICES:
        target = config[f"{name.upper()}_GRPC_TARGET"]
        # Every pod's address, for the clients' round-robin: a Service's one virtual IP would pin a connection.
        assert target.startswith("dns:///"), target
        host, _, port = target.removeprefix("dns:///").rpartition(":")
        service = named(objects, "Service", host)
        assert service["spec"].get("clusterIP") == "None", f"{name}: the Service must be headless"
        assert [p["port"] for p in service["spec"]["ports"]] == [int(port)], f"{name}: target port is the Service's"
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_gateway_probes_its_health_routes(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    gateways = [d for d in deployments(objects) if component(d) == "gateway"]
    assert gateways, "no gateway Deployment"
    live, ready = health_path(health.live), health_path(health.ready)
    for deployment in gateways:
        container = main_container(deployment)
        env = container_env(objects, container)
        port = effective(GatewaySettings, "http_port", env)
        assert effective(GatewaySettings, "http_host", env) == "0.0.0.0"
        expected = {"startupProbe": live, "livenessProbe": live, "readinessProbe": ready}
        for kind, path in expected.items():
            probe = container[kind]["httpGet"]
            assert probe["path"] == path, f"{deployment['metadata']['name']}.{kind}"
            assert container_port(container, probe["port"]) == port
        # The readiness route waits READY_CHECK_TIMEOUT_S for the services; the probe must wait longer.
        assert container["readinessProbe"]["timeoutSeconds"] > effective(GatewaySettings, "ready_check_timeout_s", env)


def worker_of(overlay: str) -> tuple[Obj, Obj, dict[str, str]]:
    """The worker Deployment of an overlay, its main container and that container's environment."""
    objects = build(OVERLAYS[overlay])
    worker = named(objects, "Deployment", "worker")
    container = main_container(worker)
    return worker, container, container_env(objects, container)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_worker_probes_its_metrics_server(overlay: str) -> None:
    _, container, env = worker_of(overlay)
    port = effective(SETTINGS["worker"], "metrics_port", env)
    assert port, "METRICS_PORT must be set: the worker's probes use its metrics server"
    assert effective(SETTINGS["worker"], "metrics_host", env) == "0.0.0.0"
    paths = {"startupProbe": "/health/ready", "readinessProbe": "/health/ready", "livenessProbe": "/health/live"}
    for kind, path in paths.items():
        probe = container[kind]["httpGet"]
        assert probe["path"] == path, kind
        assert container_port(container, probe["port"]) == port


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_worker_writes_only_to_its_own_volumes(overlay: str) -> None:
    """The root is read-only: the clones and the engine cache must each sit on a writable emptyDir."""
    worker, container, env = worker_of(overlay)
    volumes = {volume["name"]: volume for volume in pod_spec(worker)["volumes"]}
    writable = {
        mount["mountPath"]: volumes[mount["name"]]
        for mount in container["volumeMounts"]
        if not mount.get("readOnly", False)
    }
    for setting in ("work_dir", "engine_cache_dir"):
        path = effective(SETTINGS["worker"], setting, env)
        assert path, f"{setting.upper()} must be set in a cluster"
        under = [mount for mount in writable if path == mount or path.startswith(mount.rstrip("/") + "/")]
        assert under, f"{setting.upper()}={path} is on the read-only root"
        assert "emptyDir" in writable[under[0]], setting
        assert writable[under[0]]["emptyDir"].get("sizeLimit"), f"{setting}: an emptyDir without a size limit"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_startup_probes_outlast_the_startup_wait(overlay: str) -> None:
    """A service opens its port only after PostgreSQL and NATS answered, which may take STARTUP_TIMEOUT_S."""
    objects = build(OVERLAYS[overlay])
    for deployment in deployments(objects):
        container = main_container(deployment)
        probe = container["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        cls = SETTINGS[component(deployment)]
        waits = effective(cls, "startup_timeout_s", container_env(objects, container))
        assert budget > waits, f"{deployment['metadata']['name']}: {budget} s of startup probes <= {waits} s"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_termination_grace_outlasts_the_drain(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    nats_close_s = 5  # libs/common/service.py and the worker: nc.close() under asyncio.wait_for(..., timeout=5)
    for deployment in deployments(objects):
        name, kind = deployment["metadata"]["name"], component(deployment)
        container = main_container(deployment)
        env = container_env(objects, container)
        if kind == "gateway":
            drain = effective(GatewaySettings, "http_graceful_shutdown_s", env)
        elif kind == "worker":
            drain = worker_drain_s()
        else:
            drain = effective(GrpcServiceSettings, "shutdown_grace_s", env)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace > pre_stop + drain + nats_close_s, f"{name}: {grace} s <= {pre_stop} + {drain} + {nats_close_s}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_metrics_are_scraped_where_they_are_served(overlay: str) -> None:
    """Each process serves /metrics on METRICS_PORT; the pod annotations point Prometheus there."""
    objects = build(OVERLAYS[overlay])
    for deployment in deployments(objects):
        container = main_container(deployment)
        env = container_env(objects, container)
        cls = SETTINGS[component(deployment)]
        port = effective(cls, "metrics_port", env)
        assert port, f"{deployment['metadata']['name']}: METRICS_PORT is 0, no metrics server"
        assert effective(cls, "metrics_host", env) == "0.0.0.0"
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port == container_port(container, "metrics")
        assert annotations["prometheus.io/path"] == "/metrics"


# ---------------------------------------------------------------------------------------------------- every workload


@pytest.mark.parametrize("name", sorted(ALL_BUILDS))
def test_resources_requested_and_limited(name: str) -> None:
    for workload in workloads(build(ALL_BUILDS[name])):
        for container in pod_spec(workload)["containers"]:
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                assert resource in resources["requests"], f"{container['name']}: {resource} request"
                assert resource in resources["limits"], f"{container['name']}: {resource} limit"


@pytest.mark.parametrize("name", sorted(ALL_BUILDS))
def test_security_context(name: str) -> None:
    objects = build(ALL_BUILDS[name])
    accounts = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "ServiceAccount")}
    for workload in workloads(objects):
        spec = pod_spec(workload)
        label = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, label
        assert pod["runAsUser"] != 0, label
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", label
        assert spec["automountServiceAccountToken"] is False, label
        account = accounts[spec["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False, label
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, label
            assert context["readOnlyRootFilesystem"] is True, label
            assert context["capabilities"]["drop"] == ["ALL"], label
            assert "add" not in context["capabilities"], label
            assert context.get("privileged", False) is False, label
            # A read-only root needs a writable /tmp.
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            volumes = {volume["name"]: volume for volume in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], label
    for namespace in of_kind(objects, "Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", sorted(ALL_BUILDS))
def test_images_pinned(name: str) -> None:
    for workload in workloads(build(ALL_BUILDS[name])):
        for container in pod_spec(workload)["containers"]:
            repository, tag = image_tag(container["image"])
            assert "/" in repository, f"{container['image']}: a placeholder left unset (kustomize images:)"
            assert tag, f"{container['image']}: pin a tag"
            assert tag != "latest", container["image"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_migration_job_belongs_to_the_release(overlay: str) -> None:
    """The Job carries the image the overlay deploys, and is named after its version."""
    release = {
        main_container(d)["image"]
        for d in deployments(build(OVERLAYS[overlay]))
        if not d["metadata"]["name"].startswith("gateway-")  # a blue-green color may run the next release
    }
    assert len(release) == 1, release
    (image,) = release
    (job,) = of_kind(build(MIGRATIONS[MIGRATION_OF[overlay]]), "Job")
    assert main_container(job)["image"] == image
    assert main_container(job)["args"] == ["migrate"]
    _, tag = image_tag(image)
    assert job["metadata"]["name"] == "migrate-" + tag.replace(".", "-")


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_disruption_budgets_and_autoscaling(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    budgets = of_kind(objects, "PodDisruptionBudget")
    scalers = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in of_kind(objects, "HorizontalPodAutoscaler")}
    scaled = {obj["spec"]["scaleTargetRef"]["name"]: obj for obj in of_kind(objects, "ScaledObject")}
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(mine) == 1, f"{name}: one PodDisruptionBudget, found {len(mine)}"
        assert mine[0]["spec"].get("maxUnavailable") == 1 or mine[0]["spec"].get("minAvailable") is not None
        assert (name in scalers) != (name in scaled), f"{name}: scaled by exactly one HPA or ScaledObject"
        if name in scalers:
            hpa = scalers[name]
            assert hpa["apiVersion"] == "autoscaling/v2"
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployment["spec"], f"{name}: the autoscaler owns the replica count"
        spread = pod_spec(deployment)["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
        for constraint in spread:
            assert selects(constraint["labelSelector"]["matchLabels"], labels), name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_worker_scales_on_jobs(overlay: str) -> None:
    """KEDA's ScaledObject (a CRD, outside the Kubernetes schemas) checked field by field."""
    from services.analysis.worker import DURABLE

    objects = build(OVERLAYS[overlay])
    (scaled,) = of_kind(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod", "advanced",
        "triggers", "idleReplicaCount", "fallback", "initialCooldownPeriod",
    }  # fmt: skip
    target = spec["scaleTargetRef"]
    worker = named(objects, target.get("kind", "Deployment"), target["name"])
    assert component(worker) == "worker"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "nats-jetstream"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA trigger metadata values are strings"
    assert metadata["stream"] == JOBS_STREAM
    assert metadata["consumer"] == DURABLE
    env = container_env(objects, main_container(worker))
    assert int(metadata["lagThreshold"]) == effective(SETTINGS["worker"], "worker_concurrency", env)
    # KEDA runs in its own namespace: it reaches the NATS chart's monitoring port by the full name behind `nats`.
    nats_host = config_map(objects)["NATS_URL"].split("://", 1)[1].split(":")[0]
    host, _, port = metadata["natsServerMonitoringEndpoint"].rpartition(":")
    assert host == named(objects, "Service", nats_host)["spec"]["externalName"]
    assert port == "8222"


# ---------------------------------------------------------------------------------------------------- secrets, config


@pytest.mark.parametrize("name", sorted(ALL_BUILDS))
def test_secrets_only_referenced(name: str) -> None:
    objects = build(ALL_BUILDS[name])
    assert not of_kind(objects, "Secret"), "Secrets are created outside the manifests (docs/DEPLOYMENT.md)"
    secret_names = secret_settings()
    assert {"AUTH_MASTER_KEY", "TENANTS_MASTER_KEY", "SERVICE_TOKEN", "INTERNAL_SERVICE_TOKENS"} <= secret_names
    for config in of_kind(objects, "ConfigMap"):
        for key, value in config["data"].items():
            assert key not in secret_names, f"{key} in a ConfigMap"
            assert not URL_WITH_PASSWORD.match(value), f"{key}: a URL with a password in a ConfigMap"
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            for item in container.get("env", []):
                key = item["name"]
                if key in secret_names or key in CREDENTIAL_URLS:
                    if "value" in item:
                        assert key in CREDENTIAL_URLS, f"{key}: a secret written in the manifest"
                        assert not URL_WITH_PASSWORD.match(item["value"]), f"{key}: a password in the manifest"
                    else:
                        assert "secretKeyRef" in item["valueFrom"], f"{key}: from a Secret"
                elif key.endswith("_FILE"):
                    assert item["value"].startswith("/var/run/secrets/repolens/"), f"{key}: a mounted Secret"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_gateway_holds_no_database_credential(overlay: str) -> None:
    """The public process forwards over gRPC: it gets no database URL, and no Secret that holds one."""
    objects = build(OVERLAYS[overlay])
    for gateway in (d for d in deployments(objects) if component(d) == "gateway"):
        container = main_container(gateway)
        names = set(container_env(objects, container)) | {item["name"] for item in container.get("env", [])}
        assert not {name for name in names if name.startswith("DATABASE_URL")}
        mounted = {
            source["secret"]["name"]
            for volume in pod_spec(gateway)["volumes"]
            for source in volume.get("projected", {}).get("sources", [])
            if "secret" in source
        }
        assert "repolens-database" not in mounted


def _fake_secret(key: str) -> str:
    if "master-key" in key or key == "webhook-key":
        return base64.b64encode(secrets.token_bytes(32)).decode()
    if key == "internal-service-tokens":
        return json.dumps({"analysis": secrets.token_urlsafe(32)})
    if "url" in key:
        return "postgresql://repolens:pw@postgres:5432/repolens" if "database" in key else "redis://redis:6379/0"
    return secrets.token_urlsafe(32)


def _production_environment(objects: tuple[Obj, ...], workload: Obj, tmp_path: Path) -> dict[str, str]:
    """What the container's process finds in its environment, with made-up values in its mounted Secrets."""
    spec = pod_spec(workload)
    container = main_container(workload)
    env = container_env(objects, container)
    files: dict[str, str] = {}
    for volume in spec["volumes"]:
        for source in volume.get("projected", {}).get("sources", []):
            for item in source.get("secret", {}).get("items", []):
                files[item["path"]] = f"{source['secret']['name']}/{item['key']}"
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = _fake_secret(f"{ref['name']}/{ref['key']}".split("/", 1)[1])
        elif item["name"].endswith("_FILE"):
            relative = item["value"].removeprefix("/var/run/secrets/repolens/")
            assert relative in files, f"{item['name']}: {item['value']} is not a mounted Secret key"
            path = tmp_path / relative
            secret, key = files[relative].split("/", 1)
            path.write_text(_fake_secret(f"{secret}-{key}" if key == "url" else key), encoding="utf-8")
            env[item["name"]] = str(path)
    return env


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_process_accepts_its_production_configuration(
    overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENVIRONMENT=production refuses missing URLs and weak keys: each container has all its process needs."""
    objects = build(OVERLAYS[overlay])
    checked: list[tuple[str, type[CommonSettings]]] = []
    for deployment in deployments(objects):
        checked.append((deployment["metadata"]["name"], SETTINGS[component(deployment)]))
    (job,) = of_kind(build(MIGRATIONS[MIGRATION_OF[overlay]]), "Job")
    # The migration Job runs the three services' `migrate` commands, which read MigrationSettings.
    checked.append((job["metadata"]["name"], MigrationSettings))
    for name, cls in checked:
        source = objects if not name.startswith("migrate-") else build(MIGRATIONS[MIGRATION_OF[overlay]])
        workload = next(w for w in workloads(source) if w["metadata"]["name"] == name)
        env = _production_environment(source, workload, tmp_path)
        assert env["ENVIRONMENT"] == "production", name
        with monkeypatch.context() as patched:
            for key in list(os.environ):
                patched.delenv(key)
            for key, value in env.items():
                patched.setenv(key, value)
            try:
                cls()
            except ValueError as exc:
                raise AssertionError(f"{overlay}: {name} would refuse to start: {exc}") from None


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_migration_job_holds_only_the_database_secret(overlay: str) -> None:
    """Migrations need the database and nothing else: no master key or service token is mounted in the Job."""
    (job,) = of_kind(build(MIGRATIONS[MIGRATION_OF[overlay]]), "Job")
    mounted = {
        (source["secret"]["name"], item["key"])
        for volume in pod_spec(job)["volumes"]
        for source in volume.get("projected", {}).get("sources", [])
        if "secret" in source
        for item in source["secret"]["items"]
    }
    assert mounted == {("repolens-database", "url")}
    names = {item["name"] for item in main_container(job)["env"]}
    assert not names & (secret_settings() | {f"{name}_FILE" for name in secret_settings()})


# ---------------------------------------------------------------------------------------------------- network, ingress


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    policies = of_kind(objects, "NetworkPolicy")
    deny = named(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny
    assert "egress" not in deny

    def ingress_rules(kind: str) -> list[Obj]:
        pods = {"app.kubernetes.io/name": "repolens", "app.kubernetes.io/component": kind}
        return [
            rule
            for policy in policies
            if selects(policy["spec"]["podSelector"].get("matchLabels", {}), pods)
            and not policy["spec"]["podSelector"].get("matchExpressions")
            for rule in policy["spec"].get("ingress", [])
        ]

    for kind in COMPONENTS:
        for rule in ingress_rules(kind):
            ports = {port["port"] for port in rule["ports"]}
            sources = rule["from"]
            if ports == {"metrics"}:
                assert sources == [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "monitoring"}}}]
            elif kind == "gateway":
                assert ports == {"http"}
                assert sources == [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "ingress-nginx"}}}]
            else:
                assert kind in GRPC_SERVICES, f"{kind} accepts no traffic but metrics"
                assert ports == {"grpc"}
                for source in sources:  # pods of this namespace only, RepoLens processes only
                    assert set(source) == {"podSelector"}, source
                    expressions = {e["key"]: e["values"] for e in source["podSelector"].get("matchExpressions", [])}
                    labels = source["podSelector"].get("matchLabels", {})
                    allowed = set(expressions.get("app.kubernetes.io/component", [])) | {
                        labels.get("app.kubernetes.io/component")
                    }
                    assert allowed - {None} <= {"gateway", *GRPC_SERVICES, "worker"}, allowed
        assert ingress_rules(kind), f"{kind}: no ingress rule at all (metrics must be scrapable)"

    worker_egress = named(objects, "NetworkPolicy", "worker")["spec"]["egress"]
    internet = [rule for rule in worker_egress if any("ipBlock" in peer for peer in rule["to"])]
    assert internet, "workers reach git hosts and LLM APIs"
    for rule in internet:
        assert [port["port"] for port in rule["ports"]] == [443], "HTTPS only"
        for peer in rule["to"]:
            excluded = [ipaddress.IPv4Network(cidr) for cidr in peer["ipBlock"]["except"]]
            for private in PRIVATE_RANGES:
                assert any(ipaddress.IPv4Network(private).subnet_of(net) for net in excluded), private


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_ingress_serves_the_allowed_hosts_over_tls(overlay: str) -> None:
    objects = build(OVERLAYS[overlay])
    (ingress,) = of_kind(objects, "Ingress")
    config = config_map(objects)
    allowed = set(effective(GatewaySettings, "allowed_hosts", config))
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    assert hosts, "the Ingress names its host"
    assert hosts <= allowed, f"the gateway answers only ALLOWED_HOSTS {allowed}, not {hosts}"
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert hosts <= tls_hosts
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["name"] == "gateway"
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    limit = int(body[:-1]) * units[body[-1].lower()] if body[-1].isalpha() else int(body)
    assert limit >= effective(GatewaySettings, "max_body_bytes", config)


# ---------------------------------------------------------------------------------------------------- blue-green


def test_blue_green_gateway_is_the_prod_gateway_twice() -> None:
    prod = build(OVERLAYS["prod"])
    blue_green = build(OVERLAYS["prod-blue-green"])
    single = named(prod, "Deployment", "gateway")
    assert not [d for d in deployments(blue_green) if d["metadata"]["name"] == "gateway"]
    colors = {}
    for color in ("blue", "green"):
        deployment = json.loads(json.dumps(named(blue_green, "Deployment", f"gateway-{color}")))
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels.pop("color") == color
        assert deployment["spec"]["selector"]["matchLabels"].pop("color") == color
        for constraint in pod_spec(deployment)["topologySpreadConstraints"]:
            constraint["labelSelector"]["matchLabels"].pop("color")
        deployment["metadata"]["labels"].pop("color")
        deployment["metadata"]["name"] = "gateway"
        assert deployment == single, f"gateway-{color} differs from prod's gateway beyond name and color"
        colors[color] = named(blue_green, "Deployment", f"gateway-{color}")
        assert named(blue_green, "HorizontalPodAutoscaler", f"gateway-{color}")["spec"]["scaleTargetRef"]["name"] == (
            f"gateway-{color}"
        )
    # Everything else is prod's.
    others = sorted(
        (obj["kind"], obj["metadata"]["name"]) for obj in blue_green if "gateway-" not in obj["metadata"]["name"]
    )
    assert others == sorted(
        (obj["kind"], obj["metadata"]["name"])
        for obj in prod
        if not (obj["metadata"]["name"] == "gateway" and obj["kind"] in ("Deployment", "HorizontalPodAutoscaler",
                                                                           "PodDisruptionBudget"))
    )  # fmt: skip
    service = named(blue_green, "Service", "gateway")
    selector = service["spec"]["selector"]
    live = [c for c, d in colors.items() if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
    assert live == [service["spec"]["selector"]["color"]], "the Service selects exactly one color"
