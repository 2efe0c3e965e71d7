# RepoLens developer commands. `make run` and `make test` need only Python 3.11+ and git.
SHELL := /bin/bash
PYTHON ?= python3
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
PROTO_FILES := $(shell find protos -name '*.proto')

.PHONY: install protos run test test-unit test-integration test-e2e lint fmt typecheck clean bench errors-doc permissions-doc config-doc docker-build k8s backup restore

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --quiet
	touch $@

gen/.generated: $(VENV)/.synced $(PROTO_FILES)
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos \
		--plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc \
		--python_out=gen --grpc_python_out=gen --mypy_out=gen --mypy_grpc_out=gen \
		$(PROTO_FILES)
	touch $@

## install: create .venv from the lock file and generate the protobuf code
install: gen/.generated

## protos: regenerate the protobuf and gRPC code under gen/
protos:
	rm -f gen/.generated
	$(MAKE) gen/.generated

## run: start PostgreSQL, NATS, the services and the gateway on http://127.0.0.1:8000
run: install
	$(PY) -m libs.devstack run

## test: the whole suite (unit, integration, e2e) with coverage
test: install
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit --no-cov

test-integration: install
	$(PY) -m pytest tests/integration --no-cov

test-e2e: install
	$(PY) -m pytest tests/e2e --no-cov

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint protos
	$(VENV)/bin/bandit -q -r libs services gateway cli deploy -c bandit.yaml

fmt: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: install
	$(VENV)/bin/mypy

## errors-doc: regenerate API_ERRORS.md from the error registry
errors-doc: install
	$(PY) -m libs.common.errors > API_ERRORS.md

## permissions-doc: regenerate docs/permissions.md from the tenants permission table
permissions-doc: install
	$(PY) -m services.tenants.domain > docs/permissions.md

## config-doc: regenerate docs/configuration.md from the settings classes
config-doc: install
	$(PY) -m libs.common.config_doc > docs/configuration.md

bench: install
	$(PY) bench/read_path.py

## backup: pg_dump every service and tenant schema (DATABASE_URL, else make run's) into BACKUP_DIR (backups/<time>)
backup: install
	$(PY) -m libs.ops backup $(if $(BACKUP_DIR),--out $(BACKUP_DIR))

## restore: pg_restore BACKUP_DIR into DATABASE_URL's database (REPLACE=1 swaps schemas that exist); stop the stack first
restore: install
	@test -n "$(BACKUP_DIR)" || { echo "usage: make restore BACKUP_DIR=backups/<time> [REPLACE=1]"; exit 2; }
	$(PY) -m libs.ops restore --from $(BACKUP_DIR) $(if $(REPLACE),--replace)

IMAGE ?= repolens
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
OVERLAY ?= prod

## docker-build: the container image (Dockerfile), tagged $(IMAGE):$(VERSION); needs Docker, not the venv
docker-build:
	docker build --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) \
		--build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) -t $(IMAGE):$(VERSION) .

## k8s: print one kustomize overlay's manifests (OVERLAY=dev, prod, prod-blue-green, prod/migrate, dev/migrate)
k8s: install
	@$(VENV)/bin/kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

clean:
	rm -rf $(VENV) $(TOOLS) gen .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
