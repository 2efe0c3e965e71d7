# syntax=docker/dockerfile:1
# One image for every RepoLens process; the first argument picks it (deploy/entrypoint.sh):
#   gateway | auth | tenants | analysis | worker | migrate [SERVICE...] | manage SERVICE ARGS... | healthcheck ...
#
#   docker build --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) -t repolens:0.1.0 .
#
# Both stages start from the same pinned base, so the virtualenv built in the first one finds its interpreter at the
# same path in the second. Pin the digest too (python:3.11.14-slim-bookworm@sha256:...) where the registry allows.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ------------------------------------------------------------------------------------------------------------ build
FROM ${PYTHON_IMAGE} AS build

# The same uv as `make install` (Makefile: UV_VERSION); a test keeps the two equal.
ARG UV_VERSION=0.13.8
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
RUN pip install "uv==${UV_VERSION}"

WORKDIR /src
# Dependencies first, so that a change to the code does not reinstall them. Only the runtime dependencies of the
# lock file: no dev tools, no embedded servers (the `local` group), and not the project itself (the code is copied).
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-default-groups --no-install-project --python /usr/local/bin/python3

# The generated protobuf code (gen/ is not committed): what `make protos` does, with grpcio-tools at the version the
# lock file pins, installed into a throw-away environment that never reaches the final image.
COPY protos ./protos
RUN uv export --frozen --all-groups --no-hashes --no-emit-project --format requirements-txt -o /tmp/pins.txt \
    && uv venv /opt/protoc --python /usr/local/bin/python3 \
    && uv pip install --python /opt/protoc/bin/python --constraint /tmp/pins.txt grpcio-tools \
    && mkdir -p /app/gen \
    && /opt/protoc/bin/python -m grpc_tools.protoc -I protos --python_out=/app/gen --grpc_python_out=/app/gen \
        $(find protos -name '*.proto')

COPY libs /app/libs
COPY services /app/services
COPY gateway /app/gateway
COPY deploy/entrypoint.sh deploy/healthcheck.py /app/deploy/
# The root filesystem is read-only at run time: byte-code is compiled now (hash-checked, so file times do not matter).
RUN python -m compileall -q --invalidation-mode unchecked-hash /app \
    && chmod 0755 /app/deploy/entrypoint.sh

# ---------------------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.0.0-dev
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="repolens" \
      org.opencontainers.image.description="RepoLens: gateway, auth, tenants, analysis and worker processes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/repolens/repolens" \
      org.opencontainers.image.licenses="Proprietary"

# git: the worker clones repositories with the git CLI. tini: PID 1 that forwards signals and reaps the git
# processes the worker kills. No compiler, no package manager left behind for Python (pip is removed).
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 repolens \
    && useradd --system --uid 10001 --gid repolens --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin repolens \
    && install --directory --owner repolens --group repolens /var/cache/repolens

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

# The processes listen on every interface inside a container (the defaults, 127.0.0.1, suit `make run`).
# HOME and every temporary file go to /tmp, the one writable place (an emptyDir or a tmpfs).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app:/app/gen \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    GRPC_HOST=0.0.0.0 \
    HTTP_HOST=0.0.0.0 \
    METRICS_HOST=0.0.0.0 \
    REPOLENS_VERSION=${VERSION}

WORKDIR /app
USER 10001:10001
EXPOSE 8000 50051 50052 50053
ENTRYPOINT ["/usr/bin/tini", "--", "/app/deploy/entrypoint.sh"]
CMD ["help"]
