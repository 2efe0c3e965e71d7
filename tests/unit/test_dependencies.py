"""The dependency step on real manifests: every manifest type, includes, malformed and refused files, the report
and its CycloneDX rendering."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from services.analysis.engine.dependencies import (
    Dependency,
    DependencyReport,
    declared_dependencies,
    is_manifest,
    pinned_version,
    purl,
)


def write(root: Path, rel: str, content: str | bytes) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return rel


def deps(report: DependencyReport) -> list[tuple[str, str, str, str, str]]:
    return [(d.ecosystem, d.name, d.constraint, d.scope, d.manifest) for d in report.dependencies]


def test_requirements_with_includes_markers_extras_options_and_urls(tmp_path: Path) -> None:
    write(
        tmp_path,
        "requirements.txt",
        "# pinned runtime dependencies\n"
        "--index-url https://pypi.example.org/simple\n"
        "Django==5.2.8  # the framework\n"
        "requests[security,socks] >= 2.31, < 3 ; python_version >= '3.9'\n"
        "zope.interface\n"
        "typing_extensions (>=4.0)\n"
        "uvicorn[standard]==0.30.1 \\\n"
        "    --hash=sha256:0123456789abcdef\n"
        "mypkg @ https://example.org/mypkg-1.0.tar.gz\n"
        "-e git+https://github.com/org/repo.git#egg=repo\n"
        "https://example.org/pkg.whl\n"
        "./local/package\n"
        "-c constraints.txt\n"
        "-r requirements/base.txt\n",
    )
    write(tmp_path, "requirements/base.txt", "-r ../requirements.txt\nattrs>=23\n--requirement=extra.in\n")
    write(tmp_path, "requirements/extra.in", "six\n")
    write(tmp_path, "dev-requirements.txt", "pytest>=8\n-r ../outside.txt\n-r missing.txt\n")
    write(tmp_path, "requirements-test.txt", "hypothesis\n")
    write(tmp_path, "docs/requirements.txt", "sphinx>=7\n")
    write(tmp_path, "tests/requirements/py3.txt", "tblib\n")
    files = [
        "requirements.txt",
        "dev-requirements.txt",
        "requirements-test.txt",
        "docs/requirements.txt",
        "tests/requirements/py3.txt",
        "README.md",
    ]
    report = declared_dependencies(tmp_path, files)
    assert deps(report) == [
        ("pypi", "pytest", ">=8", "dev", "dev-requirements.txt"),
        ("pypi", "sphinx", ">=7", "dev", "docs/requirements.txt"),
        ("pypi", "hypothesis", "", "test", "requirements-test.txt"),
        ("pypi", "django", "==5.2.8", "runtime", "requirements.txt"),
        ("pypi", "requests", ">=2.31,<3", "runtime", "requirements.txt"),
        ("pypi", "zope-interface", "", "runtime", "requirements.txt"),
        ("pypi", "typing-extensions", ">=4.0", "runtime", "requirements.txt"),
        ("pypi", "uvicorn", "==0.30.1", "runtime", "requirements.txt"),
        ("pypi", "mypkg", "", "runtime", "requirements.txt"),
        ("pypi", "attrs", ">=23", "runtime", "requirements/base.txt"),
        ("pypi", "six", "", "runtime", "requirements/extra.in"),
        ("pypi", "tblib", "", "test", "tests/requirements/py3.txt"),
    ]
    assert report.manifests == [
        "dev-requirements.txt",
        "docs/requirements.txt",
        "requirements-test.txt",
        "requirements.txt",
        "requirements/base.txt",
        "requirements/extra.in",
        "tests/requirements/py3.txt",
    ]
    assert report.errors == {
        "../outside.txt": "-r include outside the repository (from dev-requirements.txt)",
        "missing.txt": "not found",
    }


def test_pyproject_pep621_groups_build_and_poetry(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "pyproject.toml",
        """
[build-system]
requires = ["hatchling>=1.20"]

[project]
name = "demo"
dependencies = ["httpx>=0.27", "Pydantic[email]==2.8.2; python_version>='3.11'"]

[project.optional-dependencies]
cli = ["click"]

[dependency-groups]
dev = ["ruff==0.6.0", {include-group = "test"}]
test = ["pytest>=8"]

[tool.poetry.dependencies]
python = "^3.11"
fastapi = "^0.110"
boto3 = {version = "1.34.0", optional = true}
multi = [{version = "<2", python = "<3.12"}, {version = ">=2", python = ">=3.12"}]

[tool.poetry.dev-dependencies]
black = "*"

[tool.poetry.group.docs.dependencies]
mkdocs = "1.6.0"

[tool.poetry.group.tests.dependencies]
coverage = {git = "https://github.com/nedbat/coveragepy"}
""",
    )
    report = declared_dependencies(tmp_path, [rel])
    assert report.errors == {}
    assert report.manifests == ["pyproject.toml"]
    assert deps(report) == [
        ("pypi", "httpx", ">=0.27", "runtime", rel),
        ("pypi", "pydantic", "==2.8.2", "runtime", rel),
        ("pypi", "click", "", "optional", rel),
        ("pypi", "ruff", "==0.6.0", "dev", rel),
        ("pypi", "pytest", ">=8", "test", rel),
        ("pypi", "hatchling", ">=1.20", "build", rel),
        ("pypi", "fastapi", "^0.110", "runtime", rel),
        ("pypi", "boto3", "1.34.0", "optional", rel),
        ("pypi", "multi", "<2,>=2", "runtime", rel),
        ("pypi", "black", "*", "dev", rel),
        ("pypi", "mkdocs", "1.6.0", "dev", rel),
        ("pypi", "coverage", "", "test", rel),
    ]


def test_pipfile(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "app/Pipfile",
        '[[source]]\nurl = "https://pypi.org/simple"\n\n[packages]\nFlask = "==3.0.3"\nrequests = "*"\n'
        'celery = {version = ">=5.3", extras = ["redis"]}\n\n[dev-packages]\npytest = ">= 8"\n',
    )
    assert deps(declared_dependencies(tmp_path, [rel])) == [
        ("pypi", "flask", "==3.0.3", "runtime", rel),
        ("pypi", "requests", "*", "runtime", rel),
        ("pypi", "celery", ">=5.3", "runtime", rel),
        ("pypi", "pytest", ">=8", "dev", rel),
    ]


def test_package_json(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "web/package.json",
        json.dumps(
            {
                "name": "web",
                "dependencies": {"react": "^18.3.1", "@scope/ui": "2.0.0"},
                "devDependencies": {"typescript": "~5.5.0"},
                "peerDependencies": {"react-dom": ">=18"},
                "optionalDependencies": {"fsevents": "2.3.3"},
            }
        ),
    )
    assert deps(declared_dependencies(tmp_path, [rel])) == [
        ("npm", "react", "^18.3.1", "runtime", rel),
        ("npm", "@scope/ui", "2.0.0", "runtime", rel),
        ("npm", "typescript", "~5.5.0", "dev", rel),
        ("npm", "react-dom", ">=18", "peer", rel),
        ("npm", "fsevents", "2.3.3", "optional", rel),
    ]


def test_go_mod(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "go.mod",
        "module example.com/app\n\ngo 1.22\n\n"
        "require github.com/spf13/cobra v1.8.0\n\n"
        "require (\n"
        "\tgolang.org/x/sync v0.7.0\n"
        "\tgithub.com/inconshreveable/mousetrap v1.1.0 // indirect\n"
        ")\n\n"
        "replace (\n\tgolang.org/x/sync => ../sync\n)\n\n"
        "exclude golang.org/x/net v0.1.0\n",
    )
    assert deps(declared_dependencies(tmp_path, [rel])) == [
        ("go", "github.com/spf13/cobra", "v1.8.0", "runtime", rel),
        ("go", "golang.org/x/sync", "v0.7.0", "runtime", rel),
        ("go", "github.com/inconshreveable/mousetrap", "v1.1.0", "runtime", rel),
    ]


def test_cargo_toml(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "Cargo.toml",
        """
[package]
name = "demo"

[dependencies]
serde = { version = "1.0", features = ["derive"] }
tokio = "=1.38.0"
rand = { version = "0.8", optional = true }
local = { path = "../local" }
json = { package = "serde_json", version = "1" }

[dev-dependencies]
proptest = "1.4"

[build-dependencies]
cc = "1.0.90"

[target.'cfg(windows)'.dependencies]
winapi = "0.3"

[workspace.dependencies]
anyhow = "1"
""",
    )
    assert deps(declared_dependencies(tmp_path, [rel])) == [
        ("cargo", "serde", "1.0", "runtime", rel),
        ("cargo", "tokio", "=1.38.0", "runtime", rel),
        ("cargo", "rand", "0.8", "optional", rel),
        ("cargo", "local", "", "runtime", rel),
        ("cargo", "serde_json", "1", "runtime", rel),
        ("cargo", "proptest", "1.4", "dev", rel),
        ("cargo", "cc", "1.0.90", "build", rel),
        ("cargo", "winapi", "0.3", "runtime", rel),
        ("cargo", "anyhow", "1", "runtime", rel),
    ]


POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>com.example</groupId>
  <artifactId>app</artifactId>
  <version>1.4.0</version>
  <properties><jackson.version>2.17.1</jackson.version></properties>
  <dependencyManagement><dependencies><dependency>
    <groupId>org.managed</groupId><artifactId>bom</artifactId><version>9</version>
  </dependency></dependencies></dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>com.fasterxml.jackson.core</groupId><artifactId>jackson-databind</artifactId>
      <version>${jackson.version}</version>
    </dependency>
    <dependency>
      <groupId>junit</groupId><artifactId>junit</artifactId><version>[4.13,5)</version><scope>test</scope>
    </dependency>
    <dependency>
      <groupId>jakarta.servlet</groupId><artifactId>jakarta.servlet-api</artifactId><version>6.0.0</version>
      <scope>provided</scope>
    </dependency>
    <dependency>
      <groupId>com.example</groupId><artifactId>core</artifactId><version>${project.version}</version>
      <optional>true</optional>
    </dependency>
  </dependencies>
  <profiles><profile><id>extra</id><dependencies><dependency>
    <groupId>org.extra</groupId><artifactId>extra</artifactId>
  </dependency></dependencies></profile></profiles>
</project>
"""


def test_pom_xml(tmp_path: Path) -> None:
    rel = write(tmp_path, "svc/pom.xml", POM)
    report = declared_dependencies(tmp_path, [rel])
    assert report.errors == {}
    assert deps(report) == [
        ("maven", "com.fasterxml.jackson.core:jackson-databind", "2.17.1", "runtime", rel),
        ("maven", "junit:junit", "[4.13,5)", "test", rel),
        ("maven", "jakarta.servlet:jakarta.servlet-api", "6.0.0", "build", rel),
        ("maven", "com.example:core", "1.4.0", "optional", rel),
        ("maven", "org.extra:extra", "", "runtime", rel),
    ]


@pytest.mark.parametrize(
    "prolog",
    [
        '<!DOCTYPE lolz [<!ENTITY lol "lol">]>\n',
        '<!doctype project SYSTEM "file:///etc/passwd">\n',
        '<!ENTITY xxe SYSTEM "file:///etc/passwd">\n',
    ],
)
def test_pom_with_doctype_or_entity_is_refused(tmp_path: Path, prolog: str) -> None:
    rel = write(tmp_path, "pom.xml", '<?xml version="1.0"?>\n' + prolog + POM.split("\n", 1)[1])
    report = declared_dependencies(tmp_path, [rel])
    assert report.dependencies == []
    assert report.manifests == []
    assert report.errors == {rel: "refused: contains a DOCTYPE or ENTITY declaration"}


def test_gemfile(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "Gemfile",
        'source "https://rubygems.org"\n'
        "ruby '3.3.0'\n"
        "gem 'rails', '~> 7.1', '>= 7.1.3'\n"
        'gem "pg", "1.5.6"  # the database\n'
        "gem 'bootsnap', require: false\n"
        "gem 'rubocop', group: :development\n"
        "platforms :jruby do\n"
        "  gem 'jdbc', git: 'https://github.com/org/jdbc'\n"
        "end\n"
        "group :development, :test do\n"
        "  gem 'rspec-rails', '~> 6.0'\n"
        "end\n"
        "group :test do\n"
        "  gem 'capybara'\n"
        "end\n"
        "gem 'puma'\n",
    )
    assert deps(declared_dependencies(tmp_path, [rel])) == [
        ("rubygems", "rails", "~> 7.1, >= 7.1.3", "runtime", rel),
        ("rubygems", "pg", "1.5.6", "runtime", rel),
        ("rubygems", "bootsnap", "", "runtime", rel),
        ("rubygems", "rubocop", "", "dev", rel),
        ("rubygems", "jdbc", "", "runtime", rel),
        ("rubygems", "rspec-rails", "~> 6.0", "dev", rel),
        ("rubygems", "capybara", "", "test", rel),
        ("rubygems", "puma", "", "runtime", rel),
    ]


def test_composer_json(tmp_path: Path) -> None:
    rel = write(
        tmp_path,
        "composer.json",
        json.dumps(
            {
                "require": {"php": ">=8.2", "ext-json": "*", "laravel/framework": "^11.0", "Monolog/Monolog": "3.6.0"},
                "require-dev": {"phpunit/phpunit": "^11"},
            }
        ),
    )
    assert deps(declared_dependencies(tmp_path, [rel])) == [
        ("composer", "laravel/framework", "^11.0", "runtime", rel),
        ("composer", "monolog/monolog", "3.6.0", "runtime", rel),
        ("composer", "phpunit/phpunit", "^11", "dev", rel),
    ]


def test_malformed_manifests_land_in_errors(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "a/package.json", "{not json"),
        write(tmp_path, "b/package.json", '["a list"]'),
        write(tmp_path, "c/package.json", '{"dependencies": {"x": 1}}'),
        write(tmp_path, "d/pyproject.toml", "[project\n"),
        write(tmp_path, "e/pyproject.toml", '[project]\ndependencies = "httpx"\n'),
        write(tmp_path, "f/Cargo.toml", "dependencies = 3\n"),
        write(tmp_path, "g/go.mod", "module x\nrequire (\n\tgolang.org/x/sync\n)\n"),
        write(tmp_path, "h/go.mod", "module x\nrequire (\n\tgolang.org/x/sync v0.7.0\n"),
        write(tmp_path, "i/pom.xml", "<project><dependencies>"),
        write(tmp_path, "j/pom.xml", "<settings/>"),
        write(tmp_path, "k/composer.json", b"\xff\xfe{}"),
        write(tmp_path, "l/Pipfile", "[packages]\nflask = 3\n"),
        write(tmp_path, "m/requirements.txt", b"\xff\xfe\x00d"),
        write(tmp_path, "ok/package.json", '{"dependencies": {"left-pad": "1.3.0"}}'),
    ]
    os.symlink(tmp_path / "ok" / "package.json", tmp_path / "n-package.json")
    (tmp_path / "n").mkdir()
    os.symlink(tmp_path / "ok" / "package.json", tmp_path / "n" / "package.json")
    files += ["n/package.json", "gone/Gemfile"]
    report = declared_dependencies(tmp_path, files)
    assert deps(report) == [("npm", "left-pad", "1.3.0", "runtime", "ok/package.json")]
    assert report.manifests == ["ok/package.json"]
    assert set(report.errors) == {
        "a/package.json",
        "b/package.json",
        "c/package.json",
        "d/pyproject.toml",
        "e/pyproject.toml",
        "f/Cargo.toml",
        "g/go.mod",
        "h/go.mod",
        "i/pom.xml",
        "j/pom.xml",
        "k/composer.json",
        "l/Pipfile",
        "m/requirements.txt",
        "n/package.json",
        "gone/Gemfile",
    }
    assert report.errors["a/package.json"].startswith("invalid JSON: ")
    assert report.errors["b/package.json"] == "not a JSON object"
    assert report.errors["c/package.json"] == "'dependencies' is not an object of strings"
    assert report.errors["d/pyproject.toml"].startswith("invalid TOML: ")
    assert report.errors["e/pyproject.toml"] == "[project].dependencies is not a list of strings"
    assert report.errors["f/Cargo.toml"] == "[dependencies] is not a table"
    assert report.errors["g/go.mod"] == "line 3: a requirement needs a module path and a version"
    assert report.errors["h/go.mod"] == "unterminated require block"
    assert report.errors["i/pom.xml"].startswith("invalid XML: ")
    assert report.errors["j/pom.xml"] == "not a Maven POM (the root element is not <project>)"
    assert report.errors["k/composer.json"] == "not UTF-8 text"
    assert report.errors["l/Pipfile"] == "[packages].flask is neither a string nor a table"
    assert report.errors["m/requirements.txt"] == "not UTF-8 text"
    assert report.errors["n/package.json"] == "not a regular file"
    assert report.errors["gone/Gemfile"] == "not found"
    assert all("Traceback" not in reason and len(reason) <= 200 for reason in report.errors.values())


def test_cyclonedx_document(tmp_path: Path) -> None:
    files = [
        write(tmp_path, "requirements.txt", "Django==5.2.8\nrequests>=2\n"),
        write(tmp_path, "requirements-dev.txt", "django==5.2.8\n"),
        write(tmp_path, "package.json", '{"dependencies": {"@scope/ui": "2.0.0", "react": "^18"}}'),
        write(tmp_path, "go.mod", "module m\nrequire golang.org/x/sync v0.7.0\n"),
        write(tmp_path, "Cargo.toml", '[dependencies]\nserde = "1.0"\ntokio = "=1.38.0"\n'),
        write(tmp_path, "pom.xml", POM),
        write(tmp_path, "Gemfile", "gem 'rails', '7.1.3'\n"),
        write(tmp_path, "composer.json", '{"require": {"laravel/framework": "^11.0"}}'),
    ]
    bom = declared_dependencies(tmp_path, files).to_cyclonedx()
    assert json.loads(json.dumps(bom)) == bom
    assert {k: bom[k] for k in ("bomFormat", "specVersion", "version")} == {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
    }
    assert all(c["type"] == "library" and c["bom-ref"] == c["purl"] for c in bom["components"])
    assert [(c["name"], c.get("version"), c["purl"]) for c in bom["components"]] == [
        ("serde", None, "pkg:cargo/serde"),
        ("tokio", "1.38.0", "pkg:cargo/tokio@1.38.0"),
        ("rails", "7.1.3", "pkg:gem/rails@7.1.3"),
        ("laravel/framework", None, "pkg:composer/laravel/framework"),
        ("golang.org/x/sync", "v0.7.0", "pkg:golang/golang.org/x/sync@v0.7.0"),
        ("@scope/ui", "2.0.0", "pkg:npm/%40scope/ui@2.0.0"),
        ("react", None, "pkg:npm/react"),
        ("jackson-databind", "2.17.1", "pkg:maven/com.fasterxml.jackson.core/jackson-databind@2.17.1"),
        ("junit", None, "pkg:maven/junit/junit"),
        ("jakarta.servlet-api", "6.0.0", "pkg:maven/jakarta.servlet/jakarta.servlet-api@6.0.0"),
        ("core", "1.4.0", "pkg:maven/com.example/core@1.4.0"),
        ("extra", None, "pkg:maven/org.extra/extra"),
        ("django", "5.2.8", "pkg:pypi/django@5.2.8"),
        ("requests", None, "pkg:pypi/requests"),
    ]
    assert bom["components"][7]["group"] == "com.fasterxml.jackson.core"


def test_report_to_dict(tmp_path: Path) -> None:
    rel = write(tmp_path, "package.json", '{"devDependencies": {"vitest": "^2"}}')
    write(tmp_path, "bad/composer.json", "{")
    report = declared_dependencies(tmp_path, [rel, "bad/composer.json"])
    data = report.to_dict()
    assert data == {
        "dependencies": [
            {"ecosystem": "npm", "name": "vitest", "constraint": "^2", "scope": "dev", "manifest": "package.json"}
        ],
        "manifests": ["package.json"],
        "errors": {"bad/composer.json": data["errors"]["bad/composer.json"]},
    }
    assert report.dependencies[0] == Dependency("npm", "vitest", "^2", "dev", "package.json")


@pytest.mark.parametrize(
    ("ecosystem", "constraint", "expected"),
    [
        ("pypi", "==1.2.3", "1.2.3"),
        ("pypi", "1.2.3", "1.2.3"),
        ("pypi", "==1.*", None),
        ("pypi", ">=1.2", None),
        ("pypi", "==1.2,<2", None),
        ("npm", "1.2.3", "1.2.3"),
        ("npm", "=1.2.3", "1.2.3"),
        ("npm", "^1.2.3", None),
        ("cargo", "1.2.3", None),
        ("cargo", "=1.2.3", "1.2.3"),
        ("go", "v0.0.0-20240101000000-abcdef012345", "v0.0.0-20240101000000-abcdef012345"),
        ("maven", "2.17.1", "2.17.1"),
        ("maven", "[1.0,2.0)", None),
        ("maven", "${unresolved}", None),
        ("rubygems", "= 7.1.3", "7.1.3"),
        ("rubygems", "~> 7.1", None),
        ("composer", "v3.6.0", "v3.6.0"),
        ("composer", "", None),
    ],
)
def test_pinned_version(ecosystem: str, constraint: str, expected: str | None) -> None:
    assert pinned_version(ecosystem, constraint) == expected


def test_manifest_names_and_purls() -> None:
    assert all(
        is_manifest(p)
        for p in ("requirements.txt", "a/requirements-dev.txt", "dev_requirements.txt", "requirements/prod.txt")
    )
    assert not any(is_manifest(p) for p in ("requirements.md", "notrequirements.txt", "package-lock.json"))
    assert purl("maven", "org.a:b", "1.0") == "pkg:maven/org.a/b@1.0"
    assert purl("go", "github.com/a/b") == "pkg:golang/github.com/a/b"


def test_pom_in_another_encoding_is_refused(tmp_path: Path) -> None:
    utf16 = write(tmp_path, "a/pom.xml", POM.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"))
    ebcdic = write(tmp_path, "b/pom.xml", POM.replace('encoding="UTF-8"', 'encoding="cp500"'))
    report = declared_dependencies(tmp_path, [utf16, ebcdic])
    assert report.dependencies == []
    assert report.errors == {utf16: "not UTF-8 text", ebcdic: "refused: unsupported XML encoding"}


def test_requirements_include_cycles_and_chains_end(tmp_path: Path) -> None:
    for i in range(50):
        write(tmp_path, f"reqs/r{i}.in", f"pkg{i}\n-r r{i + 1}.in\n-r r0.in\n")
    write(tmp_path, "reqs/r50.in", "-r r0.in\n")
    rel = write(tmp_path, "requirements.txt", "-r reqs/r0.in\n")
    report = declared_dependencies(tmp_path, [rel])
    assert sorted(d.name for d in report.dependencies) == sorted(f"pkg{i}" for i in range(50))
    assert len(report.manifests) == 52
    assert report.errors == {}
