#!/bin/sh
# The image's entry point: the first argument picks the RepoLens process, which replaces this shell (exec), so
# that it receives SIGTERM itself. The same script runs outside the image (tests/deploy) with `python` on PATH.
set -eu

PYTHON="${PYTHON:-python}"
HERE="$(cd "$(dirname "$0")" && pwd)"
SERVICES="auth tenants analysis"

usage() {
    cat <<'EOF'
usage: entrypoint.sh COMMAND [ARGS...]

  gateway                   the public HTTP API               (python -m gateway)
  auth | tenants | analysis a gRPC service                    (python -m services.NAME serve)
  worker                    an analysis worker                (python -m services.analysis worker)
  migrate [SERVICE...]      every schema migration, in order  (python -m services.NAME migrate up)
  manage SERVICE ARGS...    an operations command             (python -m services.SERVICE ARGS...)
  healthcheck grpc|http ... a health probe                    (deploy/healthcheck.py)
EOF
}

is_service() {
    for known in $SERVICES; do
        [ "$1" = "$known" ] && return 0
    done
    return 1
}

command="${1:-help}"
[ "$#" -gt 0 ] && shift

case "$command" in
    gateway)
        exec "$PYTHON" -m gateway "$@"
        ;;
    auth | tenants | analysis)
        exec "$PYTHON" -m "services.$command" serve "$@"
        ;;
    worker)
        exec "$PYTHON" -m services.analysis worker "$@"
        ;;
    migrate)
        # Each service owns its schema; the order only matters to a reader of the log.
        [ "$#" -gt 0 ] || set -- $SERVICES
        for service in "$@"; do
            if ! is_service "$service"; then
                echo "entrypoint: unknown service '$service' (one of: $SERVICES)" >&2
                exit 64
            fi
        done
        for service in "$@"; do
            echo "entrypoint: migrating $service" >&2
            "$PYTHON" -m "services.$service" migrate up
        done
        ;;
    manage)
        service="${1:-}"
        if ! is_service "$service"; then
            echo "entrypoint: manage needs a service (one of: $SERVICES)" >&2
            exit 64
        fi
        shift
        exec "$PYTHON" -m "services.$service" "$@"
        ;;
    healthcheck)
        exec "$PYTHON" "$HERE/healthcheck.py" "$@"
        ;;
    help | -h | --help)
        usage
        ;;
    *)
        echo "entrypoint: unknown command '$command'" >&2
        usage >&2
        exit 64
        ;;
esac
