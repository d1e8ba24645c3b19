# A private image registry on loopback: Debian's docker-registry (the CNCF distribution
# registry, 2.8) with htpasswd authentication, plain HTTP on $REGISTRY_ADDR. Docker pulls from
# it without TLS because dockerd treats 127.0.0.0/8 as an insecure registry by default
# (`docker info`: "Insecure Registries: 127.0.0.0/8"). `up` pushes private copies of the test
# images into it; the agent stand-in pulls them as the ECS agent pulls, with the credentials a
# task's `repositoryCredentials` (Secrets Manager) or ECS_ENGINE_AUTH_DATA give it.

REGISTRY_PORT=${REGISTRY_PORT:-5000}
REGISTRY_ADDR=127.0.0.1:$REGISTRY_PORT
REGISTRY_DIR=$STATE/registry
REGISTRY_USER=ecs-executor-test
# Pushed by `up`: private copies of the build image and of a service image.
REGISTRY_BUILD_IMAGE=$REGISTRY_ADDR/private/build:1
REGISTRY_SERVICE_IMAGE=$REGISTRY_ADDR/private/svc-echo:1
# Nothing listens there: the "registry cannot be reached" case.
REGISTRY_UNREACHABLE=127.0.0.1:5999

registry_ok() {
    # The API root answers 401 without credentials when htpasswd auth is on.
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$REGISTRY_ADDR/v2/" 2>/dev/null) || true
    [ "$code" = 401 ]
}

# The test user's password: made once, kept (mode 0600) so that a rerun of `up` keeps it.
registry_password() {
    local file=$REGISTRY_DIR/password
    if [ ! -s "$file" ]; then
        (umask 077 && openssl rand -hex 16 >"$file")
    fi
    cat "$file"
}

registry_write_config() {
    mkdir -p "$REGISTRY_DIR/data"
    chmod 0700 "$REGISTRY_DIR"
    local password
    password=$(registry_password)
    # bcrypt, the only scheme the registry's htpasswd backend accepts.
    htpasswd -Bbn "$REGISTRY_USER" "$password" >"$REGISTRY_DIR/htpasswd.tmp"
    # A new bcrypt salt each time: keep the old file when the password still matches.
    if [ -s "$REGISTRY_DIR/htpasswd" ] && htpasswd -vb "$REGISTRY_DIR/htpasswd" "$REGISTRY_USER" "$password" >/dev/null 2>&1; then
        rm -f "$REGISTRY_DIR/htpasswd.tmp"
    else
        mv "$REGISTRY_DIR/htpasswd.tmp" "$REGISTRY_DIR/htpasswd"
    fi
    cat >"$REGISTRY_DIR/config.yml.tmp" <<EOT
# Written by tests/local-ecs/up (lib/registry.sh).
version: 0.1
log:
  level: info
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: $REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: ecs-executor-test
    path: $REGISTRY_DIR/htpasswd
EOT
    replace_if_changed "$REGISTRY_DIR/config.yml" || true
}

registry_stamp() {
    { cat "$REGISTRY_DIR/config.yml" "$REGISTRY_DIR/htpasswd"; command -v docker-registry; } | sha256sum | cut -d' ' -f1
}

ensure_registry() {
    step_begin registry
    registry_write_config
    local pid stamp rc=0
    stamp=$(registry_stamp)
    if pid=$(service_pid registry docker-registry); then
        if [ "$(cat "$PIDS/registry.stamp" 2>/dev/null)" = "$stamp" ] && wait_ready registry docker-registry 10 registry_ok; then
            step_end "reusing the running registry on $REGISTRY_ADDR (pid $pid)"
            return
        fi
        say "registry: the running one (pid $pid) is stale or not answering, restarting it"
        stop_service registry docker-registry 10
    elif curl -s -o /dev/null --max-time 2 "http://$REGISTRY_ADDR/" 2>/dev/null; then
        die "registry: something that tests/local-ecs/up did not start answers on $REGISTRY_ADDR;" \
            "stop it (or set REGISTRY_PORT to a free port) and run tests/local-ecs/up again"
    fi
    spawn registry "$LOGS/registry.log" docker-registry serve "$REGISTRY_DIR/config.yml"
    echo "$stamp" >"$PIDS/registry.stamp"
    wait_ready registry docker-registry 30 registry_ok || rc=$?
    case $rc in
        0) ;;
        2) log_tail "$LOGS/registry.log"; die "registry: docker-registry exited while starting (log: $LOGS/registry.log)" ;;
        *) log_tail "$LOGS/registry.log"; die "registry: no answer on http://$REGISTRY_ADDR/v2/ within 30s (log: $LOGS/registry.log)" ;;
    esac
    step_end "started on $REGISTRY_ADDR (pid $(<"$PIDS/registry.pid"))"
}

# Whether the registry holds DST as pushed from the local image SRC (its image id recorded at
# the push, the manifest still answered by the registry).
registry_has() {
    local src=$1 dst=$2 id path ref code
    id=$(docker_local image inspect -f '{{.Id}}' "$src" 2>/dev/null) || return 1
    [ "$(cat "$REGISTRY_DIR/pushed/${dst//[:\/]/_}" 2>/dev/null)" = "$id" ] || return 1
    path=${dst#"$REGISTRY_ADDR"/} ref=${path##*:} path=${path%:*}
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -u "$REGISTRY_USER:$(registry_password)" \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' -I \
        "http://$REGISTRY_ADDR/v2/$path/manifests/$ref" 2>/dev/null) || true
    [ "$code" = 200 ]
}

# Pushes the private copies (unless the registry has them from the same local images), then
# untags them locally, so that the first pull of each really comes from the registry. The
# login goes to a Docker config of our own, never to root's ~/.docker.
push_registry_images() {
    step_begin registry-images
    local log=$LOGS/registry-push.log cfg=$REGISTRY_DIR/docker-config pair src dst todo=()
    for pair in "$BUILD_IMAGE=$REGISTRY_BUILD_IMAGE" "ecs-executor-test/svc-echo:1=$REGISTRY_SERVICE_IMAGE"; do
        registry_has "${pair%%=*}" "${pair#*=}" || todo+=("$pair")
    done
    if [ ${#todo[@]} -eq 0 ]; then
        step_end "$REGISTRY_BUILD_IMAGE and $REGISTRY_SERVICE_IMAGE already there"
        return
    fi
    mkdir -p "$cfg" "$REGISTRY_DIR/pushed"
    chmod 0700 "$cfg"
    registry_password | DOCKER_CONFIG=$cfg docker_local login -u "$REGISTRY_USER" --password-stdin "$REGISTRY_ADDR" >>"$log" 2>&1 \
        || { log_tail "$log"; die "registry-images: docker login $REGISTRY_ADDR failed (log: $log)"; }
    for pair in "${todo[@]}"; do
        src=${pair%%=*} dst=${pair#*=}
        docker_local tag "$src" "$dst"
        DOCKER_CONFIG=$cfg docker_local push "$dst" >>"$log" 2>&1 \
            || { log_tail "$log"; die "registry-images: docker push $dst failed (log: $log)"; }
        docker_local image inspect -f '{{.Id}}' "$src" >"$REGISTRY_DIR/pushed/${dst//[:\/]/_}"
        # Untag only; a container created from the tag keeps it (and then so do we).
        docker_local rmi "$dst" >>"$log" 2>&1 || true
    done
    DOCKER_CONFIG=$cfg docker_local logout "$REGISTRY_ADDR" >>"$log" 2>&1 || true
    step_end "pushed ${todo[*]#*=}"
}
