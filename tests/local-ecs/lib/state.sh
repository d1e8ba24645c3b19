# shellcheck disable=SC2034 # the names are for the scripts that source this file
# Fixed names of the local ECS stand-in (see ../CONTRACT.md) and the progress output of
# `up`/`down`. Sourced by every script here; defines nothing that runs on its own.

LOCAL_ECS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_ROOT=$(cd "$LOCAL_ECS_DIR/../.." && pwd)

STATE=${ECS_LOCAL_STATE:-/var/tmp/ecs-executor/local-ecs}
CERTS=$STATE/certs
LOGS=$STATE/logs
PIDS=$STATE/pids
JOBS=$STATE/jobs # what the background steps of `up` printed

MOTO_PORT=${MOTO_PORT:-4580}
MOTO_ENDPOINT=http://127.0.0.1:$MOTO_PORT
REGION=us-east-1
CLUSTER=local

DOCKER_SOCK=/var/run/docker.sock
DOCKER_PORT=2376
# The executor reaches the instance's daemon on its private IP, the tests also on its public one.
DOCKER_TLS_ADDRS=(127.0.0.1 127.0.0.2)

BUILD_IMAGE=ecs-executor-test/build:1
HELPER_IMAGE=ecs-executor-test/helper:1
# Label on each image: the sha256 of the script that made it, so a changed recipe rebuilds it.
RECIPE_LABEL=ecs-executor-test.recipe

# Our own daemon over its unix socket, whatever DOCKER_HOST/contexts the caller has set.
docker_local() {
    env -u DOCKER_HOST -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH -u DOCKER_CONTEXT \
        docker -H "unix://$DOCKER_SOCK" "$@"
}

# Progress goes to stderr, one line per event: "local-ecs: <what>".
say() { printf 'local-ecs: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2fs", b - a }'; }

# step_begin NAME; ...; step_end "what happened" -> "local-ecs: NAME: what happened (1.23s)"
step_begin() { STEP_NAME=$1; STEP_T0=$(now); }
step_end() { say "$STEP_NAME: $* ($(since "$STEP_T0"))"; }

# For `set -eE`: name the command that failed unexpectedly (a `die` says why itself).
trap_unexpected_failures() {
    trap 'say "error: unexpected failure (exit $?) of: $BASH_COMMAND (${BASH_SOURCE[0]##*/}:$LINENO)"' ERR
}

# Last lines of a log, indented, for error messages.
log_tail() {
    local file=$1 lines=${2:-25}
    if [ -s "$file" ]; then
        printf '  --- last lines of %s ---\n' "$file" >&2
        tail -n "$lines" "$file" | sed 's/^/  | /' >&2
    else
        printf '  (%s is empty or missing)\n' "$file" >&2
    fi
}

sha256_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
