# The two files `up` hands out: $STATE/standin.json (for the tests and the agent, shape fixed
# by ../CONTRACT.md) and $STATE/executor.toml (a ready ecs-executor config).

# replace_if_changed FILE: move FILE.tmp over FILE unless equal; returns 1 when unchanged.
replace_if_changed() {
    if cmp -s "$1.tmp" "$1"; then
        rm -f "$1.tmp"
        return 1
    fi
    mv "$1.tmp" "$1"
}

write_standin_json() {
    # The venv's python: the one on PATH may be a slow pyenv shim.
    (
        export STATE CERTS MOTO_ENDPOINT REGION CLUSTER DOCKER_PORT DOCKER_SOCK BUILD_IMAGE HELPER_IMAGE \
            REGISTRY_ADDR REGISTRY_USER REGISTRY_BUILD_IMAGE REGISTRY_SERVICE_IMAGE \
            REGISTRY_UNREACHABLE
        REGISTRY_PASSWORD=$(registry_password)
        export REGISTRY_PASSWORD
        "$STATE/venv/bin/python" - "$STATE/seed.json" "$STATE/standin.json.tmp" <<'PY'
import json, os, sys

seed = json.load(open(sys.argv[1]))
e = os.environ
standin = {
    "endpoint": e["MOTO_ENDPOINT"],
    "region": e["REGION"],
    "cluster": e["CLUSTER"],
    "cluster_arn": seed["cluster_arn"],
    "container_instance_arn": seed["container_instance_arn"],
    "instance_id": seed["instance_id"],
    "private_ip": seed["private_ip"],
    "public_ip": seed["public_ip"],
    "docker_port": int(e["DOCKER_PORT"]),
    "docker_host": "unix://" + e["DOCKER_SOCK"],
    "certs": {
        "ca": e["CERTS"] + "/server-ca.pem",
        "cert": e["CERTS"] + "/client.pem",
        "key": e["CERTS"] + "/client-key.pem",
    },
    "images": {"build": e["BUILD_IMAGE"], "helper": e["HELPER_IMAGE"]},
    # The private registry (lib/registry.sh): a test user and password, nothing of value.
    "registry": {
        "address": e["REGISTRY_ADDR"],
        "username": e["REGISTRY_USER"],
        "password": e["REGISTRY_PASSWORD"],
        "images": {
            "build": e["REGISTRY_BUILD_IMAGE"],
            "service": e["REGISTRY_SERVICE_IMAGE"],
        },
        "unreachable": e["REGISTRY_UNREACHABLE"],
    },
    "state_dir": e["STATE"],
}
# It names the registry's test password: readable by root only.
with open(os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    json.dump(standin, f, indent=2)
    f.write("\n")
PY
    )
    replace_if_changed "$STATE/standin.json" || true
}

write_executor_toml() {
    mkdir -p "$STATE/executor-state"
    cat >"$STATE/executor.toml.tmp" <<EOT
# ecs-executor config for the local ECS stand-in (written by tests/local-ecs/up).
cluster = "$CLUSTER"
region = "$REGION"
endpoint_url = "$MOTO_ENDPOINT"
state_dir = "$STATE/executor-state"
default_image = "$BUILD_IMAGE"
helper_image = "$HELPER_IMAGE"
use_private_ip = true

[aws]
access_key_id = "test"
secret_access_key = "test"

[docker]
port = $DOCKER_PORT
ca_file = "$CERTS/server-ca.pem"
cert_file = "$CERTS/client.pem"
key_file = "$CERTS/client-key.pem"

[stage_runner]
binary = "$STAGE_RUNNER_BIN"
EOT
    replace_if_changed "$STATE/executor.toml" || true
}
