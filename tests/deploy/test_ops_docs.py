"""The operations docs: a RUNBOOK section for every alert, and every command they name exists (make targets,
`python -m` modules and their subcommands, entry point commands, kustomize directories, repository paths)."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import ROOT

DOCS = [ROOT / "docs" / "DEPLOYMENT.md", ROOT / "docs" / "RUNBOOK.md", ROOT / "deploy" / "k8s" / "README.md"]
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yml"


def text() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in DOCS)


def alert_names() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule]


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-zA-Z][\w-]*)\s*:(?!=)", makefile, flags=re.MULTILINE))


@functools.cache
def help_of(module: str) -> str:
    """`python -m module --help` (argparse-based mains only: the services)."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert result.returncode == 0, f"python -m {module} --help: {result.stderr[-500:]}"
    return result.stdout


def entrypoint_commands() -> set[str]:
    script = (ROOT / "deploy" / "entrypoint.sh").read_text(encoding="utf-8")
    labels = re.findall(r"^\s{4}([a-z| -]+)\)\s*$", script, flags=re.MULTILINE)
    return {word.strip() for label in labels for word in label.split("|")}


def test_every_alert_has_a_runbook_section() -> None:
    names = alert_names()
    assert len(names) >= 10, "alerts.yml lost its rules?"
    headings = set(re.findall(r"^#{2,3} (RepoLens\w+)\s*$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE))
    missing = [name for name in names if name not in headings]
    assert not missing, f"docs/RUNBOOK.md has no section for {missing}"
    stale = sorted(headings - set(names))
    assert not stale, f"docs/RUNBOOK.md has sections for alerts that no longer exist: {stale}"


def test_make_targets_exist() -> None:
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", text()))
    assert {"backup", "restore", "docker-build"} <= named, "the docs name backup, restore and the image build"
    missing = named - make_targets()
    assert not missing, f"the docs name make targets the Makefile lacks: {sorted(missing)}"


def test_python_modules_and_subcommands_exist() -> None:
    uses = re.findall(r"python -m ([a-z_][\w.]*)(?:[ \t]+([a-z][\w-]*))?", text())
    assert uses, "the docs name no python -m command"
    for module, sub in uses:
        if module.endswith("."):  # a placeholder: python -m services.<name>
            continue
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
        if sub and module.startswith("services."):
            assert re.search(rf"\b{re.escape(sub)}\b", help_of(module)), f"python -m {module} has no {sub!r}"


def test_entrypoint_commands_exist() -> None:
    known = entrypoint_commands()
    uses = re.findall(r"entrypoint\.sh[ \t]+([a-z][\w-]*)(?:[ \t]+([a-z][\w-]*))?(?:[ \t]+([a-z][\w-]*))?", text())
    assert uses, "the docs name no entry point command"
    for command, first, second in uses:
        assert command in known, f"entrypoint.sh {command}: unknown"
        if command == "manage":
            assert first in ("auth", "tenants", "analysis"), f"entrypoint.sh manage {first}"
            if second:
                assert re.search(rf"\b{second}\b", help_of(f"services.{first}")), f"manage {first} {second}"
        if command == "migrate" and first:
            assert first in ("auth", "tenants", "analysis"), f"entrypoint.sh migrate {first}"


def test_kustomize_directories_exist() -> None:
    found = re.findall(r"kubectl (?:apply|diff|delete) -k (\S+)", text())
    found += re.findall(r"kubectl kustomize (\S+)", text())
    paths = {path.rstrip("`),.;") for path in found}
    assert paths, "the docs name no kustomize directory"
    for path in paths:
        assert (ROOT / path / "kustomization.yaml").is_file(), f"{path} is not a kustomization"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_repository_paths_exist(doc: Path) -> None:
    content = doc.read_text(encoding="utf-8")
    for path in set(re.findall(r"`((?:deploy|docs|services|libs|gateway|tests)/[\w./-]+)`", content)):
        assert (ROOT / path.rstrip("/")).exists(), f"{path} does not exist"
