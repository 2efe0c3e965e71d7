"""The image recipe and the automation around it: Dockerfile, .dockerignore, the CI workflow, pre-commit, bandit."""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import yaml

from tests.deploy.manifests import ROOT, image_tag

DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")


def stages() -> dict[str, str]:
    """Each build stage's instructions, by stage name."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", DOCKERFILE, flags=re.MULTILINE | re.IGNORECASE)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def build_arg(name: str) -> str:
    found = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.MULTILINE)
    assert found, f"ARG {name} has no default"
    return found.group(1)


def test_base_image_pinned() -> None:
    base = build_arg("PYTHON_IMAGE")
    repository, tag = image_tag(base)
    assert repository == "python"
    assert re.fullmatch(r"3\.1[12]\.\d+-slim(-\w+)?", tag), f"{base}: pin a full version of a slim image"
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"], "both stages on the one pinned base"


def test_dependencies_from_the_lock_file_with_the_makefiles_uv() -> None:
    make_uv = re.search(r"^UV_VERSION := (\S+)$", MAKEFILE, flags=re.MULTILINE)
    assert make_uv
    assert build_arg("UV_VERSION") == make_uv.group(1)
    build = stages()["build"]
    assert re.search(r"uv sync --frozen --no-default-groups --no-install-project", build)
    assert "grpc_tools.protoc" in build, "gen/ is generated in the image build"
    assert "COPY --from=build /opt/venv /opt/venv" in stages()["runtime"]


def test_runtime_stage_is_small_unprivileged_and_secret_free() -> None:
    runtime = stages()["runtime"]
    user = re.findall(r"^USER\s+(\S+)$", runtime, flags=re.MULTILINE)
    assert user, "the runtime stage sets USER"
    assert user[-1].split(":")[0] not in ("0", "root"), user
    assert int(user[-1].split(":")[0]) >= 10000
    installs = re.findall(r"apt-get install ((?:[^\n&]|\\\n)+)", runtime)
    packages = {word for line in installs for word in line.split() if not word.startswith("-") and word != "\\"}
    assert packages == {"git", "tini", "ca-certificates"}, f"no build tools in the final image: {packages}"
    assert "--no-install-recommends" in runtime
    assert "rm -rf /var/lib/apt/lists/*" in runtime
    assert not re.search(r"^ADD\s", DOCKERFILE, flags=re.MULTILINE), "COPY, never ADD"
    for name in re.findall(r"^\s*(?:ARG|ENV)\s+(\w+)", DOCKERFILE, flags=re.MULTILINE):
        assert not re.search(r"PASSWORD|SECRET|TOKEN|MASTER_KEY|DSN", name), f"{name}: no secret in the image"
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "/app/deploy/entrypoint.sh"]' in runtime
    assert "PYTHONOPTIMIZE" not in DOCKERFILE, "asserts stay in (bandit.yaml skips B101 on that condition)"


def test_oci_labels_from_build_arguments() -> None:
    runtime = stages()["runtime"]
    assert 'org.opencontainers.image.version="${VERSION}"' in runtime
    assert 'org.opencontainers.image.revision="${REVISION}"' in runtime
    assert "--build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION)" in MAKEFILE


def test_dockerignore_admits_only_what_the_build_copies() -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "deny everything, then admit"

    def sent(path: str) -> bool:
        included = True
        for rule in rules:
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                included = negated
        return included

    for path in (".env", ".git/config", ".venv/bin/python", "gen/x.py", ".data/pg", "tests/conftest.py"):
        assert not sent(path), f"{path} reaches the build context"
    assert not sent("libs/devstack/servers.py"), "development-only code stays out (bandit.yaml excludes it too)"
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert sent(source.rstrip("/")), f"the Dockerfile copies {source}, which .dockerignore keeps out"


def _workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8"))
    return loaded


def test_ci_runs_what_ci_run_runs_then_builds_the_image() -> None:
    local = re.findall(r"^make (\w[\w-]*)$", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert local == ["lint", "typecheck", "test"]
    jobs = _workflow()["jobs"]
    commands = [step["run"] for step in jobs["checks"]["steps"] if "run" in step]
    assert [re.match(r"make (\S+)", command).group(1) for command in commands] == local  # type: ignore[union-attr]
    image_steps = " ".join(step.get("run", "") for step in jobs["image"]["steps"])
    assert "make docker-build" in image_steps
    assert "docker push" not in image_steps, "CI builds the image, never pushes it"
    assert _workflow()["permissions"] == {"contents": "read"}


def test_pre_commit_hooks() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert {"ruff", "ruff-format", "mypy", "buf-lint", "bandit"} <= set(hooks)
    assert hooks["ruff"]["entry"].startswith(".venv/bin/ruff check")
    assert hooks["ruff-format"]["entry"].startswith(".venv/bin/ruff format")
    assert hooks["mypy"]["entry"] == ".venv/bin/mypy"
    assert hooks["buf-lint"]["entry"] == ".venv/bin/buf lint protos"
    assert "-c bandit.yaml" in hooks["bandit"]["entry"]


def test_make_lint_runs_bandit_with_its_config() -> None:
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", MAKEFILE, flags=re.MULTILINE)
    assert lint
    assert re.search(r"bandit -q -r libs services gateway\b.* -c bandit\.yaml", lint.group(1))
    config = yaml.safe_load((ROOT / "bandit.yaml").read_text(encoding="utf-8"))
    assert config["exclude_dirs"] == ["libs/devstack"]
    assert config["skips"] == ["B101"]
