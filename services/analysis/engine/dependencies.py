"""The dependency step: which third-party packages a repository declares, read from its package manifests.

`declared_dependencies(root, files)` picks the manifests among `files` (relative '/'-separated paths under `root`)
by file name and reads each with the standard library (`tomllib`, `json`, `xml.etree.ElementTree`):

* `pypi`: `requirements*.txt`, `*-requirements.txt`, `*_requirements.txt` and `requirements/*.txt`; scope `test`
  if a word of the path (split at `/`, `-`, `_`, `.`) is `test`, `tests` or `testing` (`tests/requirements/py3.txt`,
  `requirements-test.txt`), `dev` if one is `dev`, `develop`, `development`, `lint`, `linting`, `doc`, `docs` or
  `typing` (`docs/requirements.txt`), else `runtime`. One PEP 508 requirement
  a line (`name[extras] constraint ; marker`: extras and markers are accepted and dropped, comments and `\\`
  continuations handled); `-r`/`--requirement` includes are followed within the repository (relative to the
  including file, each file once; an included file that is itself among `files` is read on its own with its own
  scope, otherwise with the includer's); other options (`-e`, `-c`, `-i`, `--hash`, ...), URLs and local paths
  are skipped, and `name @ url` is reported with an empty constraint. `pyproject.toml`: PEP 621
  `[project].dependencies` (`runtime`), `[project.optional-dependencies]` (`optional`), PEP 735
  `[dependency-groups]` (`test` for a group named like `test*`, else `dev`; `{include-group = ...}` entries are
  skipped), `[build-system].requires` (`build`), Poetry `[tool.poetry.dependencies]` (`runtime`, or `optional`
  with `optional = true`; `python` is skipped), `[tool.poetry.dev-dependencies]` (`dev`) and
  `[tool.poetry.group.<name>.dependencies]` (like dependency groups; `main` is `runtime`). `Pipfile`:
  `[packages]` (`runtime`), `[dev-packages]` (`dev`). Python names are normalised (PEP 503: lower case, runs of
  `-_.` as `-`), constraints have their white space removed.
* `npm`: `package.json` `dependencies` (`runtime`), `devDependencies` (`dev`), `peerDependencies` (`peer`),
  `optionalDependencies` (`optional`).
* `go`: `go.mod` `require` lines and blocks (`runtime`); `// indirect` requirements are included too (since Go
  1.17 go.mod lists every module the build needs), `replace`/`exclude`/`retract`/`tool` blocks are not.
* `cargo`: `Cargo.toml` `[dependencies]` (`runtime`, or `optional` with `optional = true`), `[dev-dependencies]`
  (`dev`), `[build-dependencies]` (`build`), the same under `[target.<cfg>]`, and `[workspace.dependencies]`
  (`runtime`); a version string or a table (`version`, `package` renames, `workspace = true` leaves the
  constraint empty, as do `git` and `path` sources).
* `maven`: `pom.xml` `<dependencies>` of the project and of its profiles, named `groupId:artifactId`; scope
  `compile`/`runtime`/`system` → `runtime`, `provided` → `build`, `test` → `test`, `<optional>true` →
  `optional`; `${property}` versions are resolved from `<properties>` and `project.version`. A POM holding
  `<!DOCTYPE` or `<!ENTITY` is refused unparsed (entity expansion attacks) and recorded in `errors`, and so is
  one that is not UTF-8 (or declares an encoding other than UTF-8, ASCII, Latin-1), where such a declaration
  could hide from that check.
* `rubygems`: `Gemfile` `gem 'name', '~> 1.2', '>= 1.2.1'` lines (constraints joined with `, `); scope from
  `group ... do` blocks or `group:`/`groups:` options: `dev` for `:development`, `test` for `:test` alone, else
  `runtime`.
* `composer`: `composer.json` `require` (`runtime`), `require-dev` (`dev`); platform requirements (`php`,
  `ext-*`, `lib-*`, anything without a `vendor/` prefix) are skipped.

A manifest that cannot be read or parsed, or whose sections have the wrong shape, contributes no dependencies and
is listed in `errors` with a short reason (never a stack trace); nothing raises. Manifests are also refused when
they are symbolic links, lie outside `root`, or exceed `MAX_MANIFEST_BYTES`.

`DependencyReport.to_cyclonedx()` renders a minimal CycloneDX 1.5 JSON document: one `library` component per
distinct package and pinned version, with a package URL (`pkg:pypi/name`, `pkg:npm/%40scope/name`,
`pkg:golang/module`, `pkg:cargo/name`, `pkg:maven/group/artifact`, `pkg:gem/name`, `pkg:composer/vendor/name`)
that carries `@version` only when the constraint pins one exact version (see `pinned_version`).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import stat
import tomllib
import xml.etree.ElementTree as ET  # nosec B405 # only parsed after DTDs and entities are refused (see ET.fromstring)
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from services.analysis.engine.context import Context

__all__ = [
    "ECOSYSTEMS",
    "MAX_MANIFEST_BYTES",
    "SCOPES",
    "Dependency",
    "DependencyReport",
    "declared_dependencies",
    "is_manifest",
    "pinned_version",
    "purl",
]

ECOSYSTEMS = ("pypi", "npm", "go", "cargo", "maven", "rubygems", "composer")
SCOPES = ("runtime", "dev", "optional", "build", "test", "peer")
MAX_MANIFEST_BYTES = 5_000_000
_MAX_REASON = 200


@dataclass(frozen=True, slots=True)
class Dependency:
    ecosystem: str  # one of ECOSYSTEMS
    name: str  # pypi: normalised; maven: groupId:artifactId; go: the module path
    constraint: str  # as declared (pypi: without white space); "" for none
    scope: str  # one of SCOPES
    manifest: str  # the manifest's path, relative to the root

    def to_dict(self) -> dict[str, Any]:
        return {
            "ecosystem": self.ecosystem,
            "name": self.name,
            "constraint": self.constraint,
            "scope": self.scope,
            "manifest": self.manifest,
        }


@dataclass(frozen=True, slots=True)
class DependencyReport:
    dependencies: list[Dependency]  # by manifest path, then in declaration order
    manifests: list[str]  # manifests read successfully (including `-r` includes), sorted
    errors: dict[str, str]  # path -> short reason

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: {"dependencies": [...], "manifests": [...], "errors": {...}}."""
        return {
            "dependencies": [d.to_dict() for d in self.dependencies],
            "manifests": list(self.manifests),
            "errors": dict(self.errors),
        }

    def to_cyclonedx(self) -> dict[str, Any]:
        """A minimal CycloneDX 1.5 JSON document (as a dict) listing each distinct package/version once."""
        components: list[dict[str, Any]] = []
        seen: set[str] = set()
        for dep in self.dependencies:
            version = pinned_version(dep.ecosystem, dep.constraint)
            ref = purl(dep.ecosystem, dep.name, version)
            if ref in seen:
                continue
            seen.add(ref)
            component: dict[str, Any] = {"type": "library", "bom-ref": ref}
            if dep.ecosystem == "maven" and ":" in dep.name:
                group, artifact = dep.name.split(":", 1)
                component["group"] = group
                component["name"] = artifact
            else:
                component["name"] = dep.name
            if version is not None:
                component["version"] = version
            component["purl"] = ref
            components.append(component)
        return {"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": components}


_PURL_TYPES = {
    "pypi": "pypi",
    "npm": "npm",
    "go": "golang",
    "cargo": "cargo",
    "maven": "maven",
    "rubygems": "gem",
    "composer": "composer",
}


def purl(ecosystem: str, name: str, version: str | None = None) -> str:
    """The package URL of `name` (`pkg:<type>/<namespace>/<name>[@version]`, each segment percent-encoded)."""
    segments = name.replace(":", "/").split("/") if ecosystem == "maven" else name.split("/")
    path = "/".join(quote(s, safe="") for s in segments)
    out = f"pkg:{_PURL_TYPES[ecosystem]}/{path}"
    return out if version is None else f"{out}@{quote(version, safe='')}"


_PLAIN_VERSION = re.compile(r"v?\d+(?:\.\d+)*(?:[-+][0-9A-Za-z.+-]+)?")
_PYPI_EXACT = re.compile(r"(?:===?)?(\d+(?:\.\d+)*(?:[-+._]?[0-9A-Za-z.+-]+)?)")


def pinned_version(ecosystem: str, constraint: str) -> str | None:
    """The one exact version `constraint` allows, or None (a range, a wildcard, no constraint).

    pypi: `==1.2.3`, `===1.2.3` or a bare `1.2.3` (Poetry's exact form); npm: `1.2.3` or `=1.2.3`; go: any
    version (go.mod records exact versions); cargo: `=1.2.3` only (a bare version means `^`); maven, rubygems,
    composer: a bare version (`= 1.2.3` too for rubygems)."""
    c = constraint.strip()
    if not c or "*" in c or "," in c:
        return None
    if ecosystem == "pypi":
        m = _PYPI_EXACT.fullmatch(c)
        return m.group(1) if m else None
    if ecosystem == "go":
        return c
    if ecosystem == "cargo":
        c = c[1:].strip() if c.startswith("=") else ""
    elif ecosystem in ("npm", "rubygems"):
        c = c[1:].strip() if c.startswith("=") and not c.startswith("==") else c
    return c if _PLAIN_VERSION.fullmatch(c) else None


class _MalformedError(Exception):
    """A manifest's content has the wrong shape; the message is the reason shown in `errors`."""


_REQUIREMENTS_NAME = re.compile(r"(?:.*[-_.])?requirements(?:[-_.].*)?\.txt", re.IGNORECASE)
_MANIFEST_NAMES = {
    "pyproject.toml": "pyproject",
    "Pipfile": "pipfile",
    "package.json": "npm",
    "go.mod": "go",
    "Cargo.toml": "cargo",
    "pom.xml": "maven",
    "Gemfile": "gemfile",
    "composer.json": "composer",
}


def is_manifest(path: str) -> bool:
    """True if `declared_dependencies` reads the file at `path` (relative, '/'-separated)."""
    return _kind(path) is not None


def _kind(path: str) -> str | None:
    parts = path.split("/")
    name = parts[-1]
    if name in _MANIFEST_NAMES:
        return _MANIFEST_NAMES[name]
    if _REQUIREMENTS_NAME.fullmatch(name) or (
        len(parts) > 1 and parts[-2] == "requirements" and name.lower().endswith(".txt")
    ):
        return "requirements"
    return None


def declared_dependencies(root: Path, files: Iterable[str]) -> DependencyReport:
    """Read the dependencies declared by the manifests among `files` (paths relative to `root`)."""
    reader = _Reader(os.path.realpath(root))
    manifests = sorted({(p, kind) for p in files if (kind := _kind(p)) is not None})
    reader.requirement_files = {p for p, kind in manifests if kind == "requirements"}
    for rel, kind in manifests:
        reader.read_manifest(rel, kind)
    deps = sorted(reader.found, key=lambda item: item[0])
    return DependencyReport(
        dependencies=[d for _, d in deps],
        manifests=sorted(reader.manifests),
        errors=dict(sorted(reader.errors.items())),
    )


class _Reader:
    def __init__(self, root_real: str) -> None:
        self.root_real = root_real
        self.found: list[tuple[tuple[str, int], Dependency]] = []  # ((manifest, index), dependency)
        self.manifests: set[str] = set()
        self.errors: dict[str, str] = {}
        self.requirement_files: set[str] = set()
        self.visited_requirements: set[str] = set()

    def error(self, rel: str, reason: str) -> None:
        reason = " ".join(reason.split())
        self.errors[rel] = reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"

    def read_bytes(self, rel: str) -> bytes | None:
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or os.path.isabs(rel):
            self.error(rel, "outside the repository")
            return None
        full = os.path.join(self.root_real, *parts)
        try:
            st = os.lstat(full)
        except OSError:
            self.error(rel, "not found")
            return None
        if not stat.S_ISREG(st.st_mode):
            self.error(rel, "not a regular file")
            return None
        if os.path.commonpath([self.root_real, os.path.realpath(full)]) != self.root_real:
            self.error(rel, "outside the repository")
            return None
        if st.st_size > MAX_MANIFEST_BYTES:
            self.error(rel, f"larger than {MAX_MANIFEST_BYTES} bytes")
            return None
        try:
            with open(full, "rb") as fh:
                return fh.read(MAX_MANIFEST_BYTES + 1)
        except OSError as exc:
            self.error(rel, f"unreadable: {exc.strerror or type(exc).__name__}")
            return None

    def read_manifest(self, rel: str, kind: str) -> None:
        if kind == "requirements":
            self.read_requirements(rel, _requirements_scope(rel))
            return
        data = self.read_bytes(rel)
        if data is None:
            return
        parser = _PARSERS[kind]
        try:
            deps = parser(rel, data)
        except _MalformedError as exc:
            self.error(rel, str(exc))
            return
        except tomllib.TOMLDecodeError as exc:
            self.error(rel, f"invalid TOML: {exc}")
            return
        except UnicodeDecodeError:
            self.error(rel, "not UTF-8 text")
            return
        except json.JSONDecodeError as exc:
            self.error(rel, f"invalid JSON: {exc}")
            return
        except ET.ParseError as exc:
            self.error(rel, f"invalid XML: {exc}")
            return
        except Exception as exc:  # a last resort (deep nesting, ...): a manifest never stops the step
            self.error(rel, f"unparsable: {type(exc).__name__}")
            return
        self.add(rel, deps)

    def add(self, rel: str, deps: list[Dependency]) -> None:
        self.manifests.add(rel)
        self.found.extend(((rel, i), d) for i, d in enumerate(deps))

    def read_requirements(self, first: str, first_scope: str) -> None:
        pending = [(first, first_scope)]
        while pending:
            rel, scope = pending.pop(0)
            if rel in self.visited_requirements:
                continue
            self.visited_requirements.add(rel)
            data = self.read_bytes(rel)
            if data is None:
                continue
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError:
                self.error(rel, "not UTF-8 text")
                continue
            deps: list[Dependency] = []
            base = posixpath.dirname(rel)
            for line in _logical_lines(text):
                include = _INCLUDE.match(line)
                if include is None:
                    dep = _requirement(line, scope, rel)
                    if dep is not None:
                        deps.append(dep)
                    continue
                target = include.group(1)
                joined = posixpath.normpath(posixpath.join(base, target))
                if posixpath.isabs(target) or joined == ".." or joined.startswith("../"):
                    self.error(target, f"-r include outside the repository (from {rel})")
                elif joined not in self.requirement_files:
                    pending.append((joined, scope))
            self.add(rel, deps)


# --- requirements files and PEP 508 -------------------------------------------------------------------------

_INCLUDE = re.compile(r"(?:-r\s*|--requirement(?:\s*=\s*|\s+))(\S+)$")
_COMMENT = re.compile(r"(?:^|\s)#.*$")
_URL_OR_PATH = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://|git\+|hg\+|svn\+|bzr\+|\.|/|~)")
_TRAILING_OPTIONS = re.compile(r"\s+--?[A-Za-z].*$")
_PEP508 = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?\s*(.*)")
_NORMALISE = re.compile(r"[-_.]+")
_WORD_SPLIT = re.compile(r"[/_.-]+")
_TEST_WORDS = frozenset({"test", "tests", "testing"})
_DEV_WORDS = frozenset({"dev", "develop", "development", "lint", "linting", "doc", "docs", "typing"})


def _logical_lines(text: str) -> Iterable[str]:
    pending = ""
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def _requirements_scope(rel: str) -> str:
    words = set(_WORD_SPLIT.split(rel.lower()))
    if words & _TEST_WORDS:
        return "test"
    if words & _DEV_WORDS:
        return "dev"
    return "runtime"


def _requirement(line: str, scope: str, manifest: str) -> Dependency | None:
    """A requirements-file line as a dependency, or None for options, URLs, paths and unparsable lines."""
    if line.startswith("-") or _URL_OR_PATH.match(line):
        return None
    return _pep508(_TRAILING_OPTIONS.sub("", line), scope, manifest)


def _pep508(spec: str, scope: str, manifest: str) -> Dependency | None:
    m = _PEP508.fullmatch(spec.strip())
    if m is None:
        return None
    rest = m.group(2).split(";", 1)[0].strip()
    constraint = "" if rest.startswith("@") else re.sub(r"\s+", "", rest)
    if constraint.startswith("(") and constraint.endswith(")"):
        constraint = constraint[1:-1]
    return Dependency("pypi", _pypi_name(m.group(1)), constraint, scope, manifest)


def _pypi_name(name: str) -> str:
    return _NORMALISE.sub("-", name).lower()


def _group_scope(group: str, default: str) -> str:
    g = group.lower()
    if g.startswith("test"):
        return "test"
    return default


# --- TOML manifests ---------------------------------------------------------------------------------------------


def _toml(data: bytes) -> dict[str, Any]:
    return tomllib.loads(data.decode("utf-8-sig"))


def _table(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`doc[k1][k2]...` as a table, {} when absent; `_MalformedError` when present but not a table."""
    node: Any = doc
    for i, key in enumerate(keys):
        if not isinstance(node, dict):
            raise _MalformedError(f"[{'.'.join(keys[:i])}] is not a table")
        node = node.get(key, {})
    if not isinstance(node, dict):
        raise _MalformedError(f"[{'.'.join(keys)}] is not a table")
    return node


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _MalformedError(f"{where} is not a list of strings")
    return value


def _pyproject(rel: str, data: bytes) -> list[Dependency]:
    doc = _toml(data)
    deps: list[Dependency] = []

    def add_specs(specs: list[str], scope: str) -> None:
        for spec in specs:
            dep = _pep508(spec, scope, rel)
            if dep is not None:
                deps.append(dep)

    project = _table(doc, "project")
    add_specs(_string_list(project.get("dependencies", []), "[project].dependencies"), "runtime")
    for group, specs in _table(doc, "project", "optional-dependencies").items():
        add_specs(_string_list(specs, f"[project.optional-dependencies].{group}"), "optional")
    for group, entries in _table(doc, "dependency-groups").items():
        if not isinstance(entries, list):
            raise _MalformedError(f"[dependency-groups].{group} is not a list")
        add_specs([e for e in entries if isinstance(e, str)], _group_scope(group, "dev"))
    add_specs(_string_list(_table(doc, "build-system").get("requires", []), "[build-system].requires"), "build")
    poetry = _table(doc, "tool", "poetry")
    deps += _poetry_table(rel, _table(poetry, "dependencies"), "runtime")
    deps += _poetry_table(rel, _table(poetry, "dev-dependencies"), "dev")
    for group, body in _table(poetry, "group").items():
        if not isinstance(body, dict):
            raise _MalformedError(f"[tool.poetry.group.{group}] is not a table")
        scope = "runtime" if group == "main" else _group_scope(group, "dev")
        deps += _poetry_table(rel, _table(body, "dependencies"), scope)
    return deps


def _poetry_table(rel: str, table: dict[str, Any], scope: str) -> list[Dependency]:
    deps: list[Dependency] = []
    for name, value in table.items():
        if name.lower() == "python":
            continue
        entries = value if isinstance(value, list) else [value]
        versions: list[str] = []
        dep_scope = scope
        for entry in entries:
            if isinstance(entry, str):
                versions.append(entry)
            elif isinstance(entry, dict):
                if isinstance(entry.get("version"), str):
                    versions.append(entry["version"])
                if entry.get("optional") is True and scope == "runtime":
                    dep_scope = "optional"
            else:
                raise _MalformedError(f"dependency {name!r} is neither a string nor a table")
        constraint = ",".join(re.sub(r"\s+", "", v) for v in versions)
        deps.append(Dependency("pypi", _pypi_name(name), constraint, dep_scope, rel))
    return deps


def _pipfile(rel: str, data: bytes) -> list[Dependency]:
    doc = _toml(data)
    deps: list[Dependency] = []
    for section, scope in (("packages", "runtime"), ("dev-packages", "dev")):
        for name, value in _table(doc, section).items():
            if isinstance(value, str):
                constraint = value
            elif isinstance(value, dict):
                constraint = value.get("version", "") if isinstance(value.get("version"), str) else ""
            else:
                raise _MalformedError(f"[{section}].{name} is neither a string nor a table")
            deps.append(Dependency("pypi", _pypi_name(name), re.sub(r"\s+", "", constraint), scope, rel))
    return deps


_CARGO_SECTIONS = (
    ("dependencies", "runtime"),
    ("dev-dependencies", "dev"),
    ("dev_dependencies", "dev"),
    ("build-dependencies", "build"),
    ("build_dependencies", "build"),
)


def _cargo(rel: str, data: bytes) -> list[Dependency]:
    doc = _toml(data)
    deps: list[Dependency] = []
    tables: list[tuple[str, dict[str, Any], str]] = []
    for section, scope in _CARGO_SECTIONS:
        tables.append((section, _table(doc, section), scope))
    for cfg, body in _table(doc, "target").items():
        if not isinstance(body, dict):
            raise _MalformedError(f"[target.{cfg}] is not a table")
        for section, scope in _CARGO_SECTIONS:
            tables.append((f"target.{cfg}.{section}", _table(body, section), scope))
    tables.append(("workspace.dependencies", _table(doc, "workspace", "dependencies"), "runtime"))
    for where, table, scope in tables:
        for key, value in table.items():
            name, constraint, dep_scope = key, "", scope
            if isinstance(value, str):
                constraint = value
            elif isinstance(value, dict):
                if isinstance(value.get("version"), str):
                    constraint = value["version"]
                if isinstance(value.get("package"), str):
                    name = value["package"]
                if value.get("optional") is True and scope == "runtime":
                    dep_scope = "optional"
            else:
                raise _MalformedError(f"[{where}].{key} is neither a string nor a table")
            deps.append(Dependency("cargo", name, constraint.strip(), dep_scope, rel))
    return deps


# --- JSON manifests ---------------------------------------------------------------------------------------------


def _json_object(data: bytes) -> dict[str, Any]:
    doc = json.loads(data.decode("utf-8-sig"))
    if not isinstance(doc, dict):
        raise _MalformedError("not a JSON object")
    return doc


def _string_map(doc: dict[str, Any], key: str) -> dict[str, str]:
    value = doc.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _MalformedError(f"{key!r} is not an object of strings")
    return value


def _package_json(rel: str, data: bytes) -> list[Dependency]:
    doc = _json_object(data)
    deps: list[Dependency] = []
    for key, scope in (
        ("dependencies", "runtime"),
        ("devDependencies", "dev"),
        ("peerDependencies", "peer"),
        ("optionalDependencies", "optional"),
    ):
        deps += [Dependency("npm", n, c.strip(), scope, rel) for n, c in _string_map(doc, key).items()]
    return deps


def _composer(rel: str, data: bytes) -> list[Dependency]:
    doc = _json_object(data)
    deps: list[Dependency] = []
    for key, scope in (("require", "runtime"), ("require-dev", "dev")):
        deps += [
            Dependency("composer", n.lower(), c.strip(), scope, rel)
            for n, c in _string_map(doc, key).items()
            if "/" in n
        ]
    return deps


# --- go.mod, Gemfile --------------------------------------------------------------------------------------------


def _go_mod(rel: str, data: bytes) -> list[Dependency]:
    deps: list[Dependency] = []
    block: str | None = None
    for number, raw in enumerate(data.decode("utf-8-sig").splitlines(), 1):
        tokens = raw.split("//", 1)[0].split()
        if not tokens:
            continue
        if block is not None:
            if tokens == [")"]:
                block = None
            elif block == "require":
                deps.append(_go_require(tokens, number, rel))
            continue
        if len(tokens) == 2 and tokens[1] == "(":
            block = tokens[0]
        elif tokens[0] == "require":
            deps.append(_go_require(tokens[1:], number, rel))
    if block is not None:
        raise _MalformedError(f"unterminated {block} block")
    return deps


def _go_require(tokens: list[str], number: int, rel: str) -> Dependency:
    if len(tokens) != 2:
        raise _MalformedError(f"line {number}: a requirement needs a module path and a version")
    return Dependency("go", tokens[0].strip('"`'), tokens[1], "runtime", rel)


_GEM = re.compile(r"""\s*gem\s*\(?\s*(["'])([^"']+)\1(.*)""")
_GEM_STRING = re.compile(r"""(["'])([^"']*)\1""")
_GEM_VERSION = re.compile(r"\s*(?:[~<>=!]+\s*)?\d")
_GEM_GROUP_OPTION = re.compile(r"""(?::?groups?:|:groups?\s*=>)\s*(\[[^\]]*\]|:\w+|["']\w+["'])""")
_GEM_GROUP_BLOCK = re.compile(r"\s*group\b(.*?)\bdo\b")
_GEM_SYMBOLS = re.compile(r"""[:"'](\w+)""")
_BLOCK_START = re.compile(r".*\bdo\s*(?:\|[^|]*\|)?\s*$")
_BLOCK_END = re.compile(r"\s*end\b")


def _gem_scope(groups: list[str]) -> str | None:
    names = {g.lower() for g in groups}
    if names & {"development", "dev"}:
        return "dev"
    if "test" in names:
        return "test"
    return "runtime" if names else None


def _strip_ruby_comment(line: str) -> str:
    quote_char = ""
    for i, ch in enumerate(line):
        if quote_char:
            if ch == quote_char:
                quote_char = ""
        elif ch in "\"'":
            quote_char = ch
        elif ch == "#":
            return line[:i]
    return line


def _gemfile(rel: str, data: bytes) -> list[Dependency]:
    deps: list[Dependency] = []
    stack: list[str | None] = []  # the scope each open `do` block sets, None for blocks that set none
    for raw in data.decode("utf-8-sig").splitlines():
        line = _strip_ruby_comment(raw)
        gem = _GEM.match(line)
        if gem:
            name, rest = gem.group(2), gem.group(3)
            versions: list[str] = []
            for part in rest.split(","):
                s = _GEM_STRING.fullmatch(part.strip())
                if s and _GEM_VERSION.match(s.group(2)):
                    versions.append(s.group(2).strip())
            option = _GEM_GROUP_OPTION.search(rest)
            scope = _gem_scope(_GEM_SYMBOLS.findall(option.group(1))) if option else None
            if scope is None:
                scope = next((s for s in reversed(stack) if s is not None), "runtime")
            deps.append(Dependency("rubygems", name, ", ".join(versions), scope, rel))
            continue
        group = _GEM_GROUP_BLOCK.match(line)
        if group:
            stack.append(_gem_scope(_GEM_SYMBOLS.findall(group.group(1))))
        elif _BLOCK_START.match(line):
            stack.append(None)
        elif _BLOCK_END.match(line) and stack:
            stack.pop()
    return deps


# --- pom.xml ----------------------------------------------------------------------------------------------------

_UNSAFE_XML = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*["']([^"']*)["']""")
_XML_SAFE_ENCODINGS = frozenset({b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin-1", b"latin1"})
_PROPERTY = re.compile(r"\$\{([^}]+)\}")
_MAVEN_SCOPES = {"": "runtime", "compile": "runtime", "runtime": "runtime", "system": "runtime"}
_MAVEN_SCOPES |= {"provided": "build", "test": "test"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in element if _local(c.tag) == name), None)


def _child_text(element: ET.Element, name: str) -> str:
    child = _child(element, name)
    return (child.text or "").strip() if child is not None else ""


def _pom(rel: str, data: bytes) -> list[Dependency]:
    # Only UTF-8 (or ASCII, Latin-1) without NUL bytes: then a DOCTYPE or ENTITY declaration cannot hide in
    # another encoding (UTF-16, EBCDIC) from the check below.
    if b"\0" in data:
        raise _MalformedError("not UTF-8 text")
    data.decode("utf-8")
    declared = _XML_ENCODING.match(data)
    if declared and declared.group(1).lower() not in _XML_SAFE_ENCODINGS:
        raise _MalformedError("refused: unsupported XML encoding")
    if _UNSAFE_XML.search(data):
        raise _MalformedError("refused: contains a DOCTYPE or ENTITY declaration")
    project = ET.fromstring(data)  # noqa: S314 # nosec B314 # DTDs refused above; ElementTree fetches no entity
    if _local(project.tag) != "project":
        raise _MalformedError("not a Maven POM (the root element is not <project>)")
    props: dict[str, str] = {}
    properties = _child(project, "properties")
    if properties is not None:
        props.update({_local(p.tag): (p.text or "").strip() for p in properties})
    parent = _child(project, "parent")
    for key in ("version", "groupId", "artifactId"):
        value = _child_text(project, key) or (_child_text(parent, key) if parent is not None else "")
        if value:
            props[f"project.{key}"] = value
            props[f"pom.{key}"] = value

    def resolve(value: str) -> str:
        for _ in range(3):
            value = _PROPERTY.sub(lambda m: props.get(m.group(1), m.group(0)), value)
        return value

    containers: list[ET.Element] = [project]
    profiles = _child(project, "profiles")
    if profiles is not None:
        containers += [p for p in profiles if _local(p.tag) == "profile"]
    deps: list[Dependency] = []
    for container in containers:
        dependencies = _child(container, "dependencies")
        if dependencies is None:
            continue
        for dep in dependencies:
            if _local(dep.tag) != "dependency":
                continue
            group, artifact = resolve(_child_text(dep, "groupId")), resolve(_child_text(dep, "artifactId"))
            maven_scope = resolve(_child_text(dep, "scope")).lower()
            if not group or not artifact or maven_scope not in _MAVEN_SCOPES:
                continue
            scope = _MAVEN_SCOPES[maven_scope]
            if scope == "runtime" and _child_text(dep, "optional").lower() == "true":
                scope = "optional"
            version = resolve(_child_text(dep, "version"))
            deps.append(Dependency("maven", f"{group}:{artifact}", version, scope, rel))
    return deps


_PARSERS: dict[str, Callable[[str, bytes], list[Dependency]]] = {
    "pyproject": _pyproject,
    "pipfile": _pipfile,
    "npm": _package_json,
    "go": _go_mod,
    "cargo": _cargo,
    "maven": _pom,
    "gemfile": _gemfile,
    "composer": _composer,
}


def step(ctx: Context) -> None:
    """The declared dependencies of the checkout's manifests, and the same as a CycloneDX SBOM."""
    declared = declared_dependencies(ctx.checkout, ctx.paths)
    ctx.sections["dependencies"] = declared.to_dict()
    ctx.sections["sbom"] = declared.to_cyclonedx()
