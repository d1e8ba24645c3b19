# The instance's Docker daemon: the unix socket for the agent, plus mutual-TLS TCP on the
# instance's private (127.0.0.1) and public (127.0.0.2) IPs for the executor. Plain TCP never.

docker_unix_ok() {
    [ -S "$DOCKER_SOCK" ] && curl -sf --max-time 3 --unix-socket "$DOCKER_SOCK" http://docker/_ping >/dev/null
}

docker_tls_ok() {
    local ip
    for ip in "${DOCKER_TLS_ADDRS[@]}"; do
        curl -sf --max-time 3 --cacert "$CERTS/server-ca.pem" --cert "$CERTS/client.pem" \
            --key "$CERTS/client-key.pem" "https://$ip:$DOCKER_PORT/_ping" >/dev/null || return 1
    done
}

docker_ready() { docker_unix_ok && docker_tls_ok; }

# 127.0.0.0/8 is all local on Linux; add an address to lo only where it is not (an address
# binds when the kernel routes it as local).
ensure_loopback_addrs() {
    local ip
    for ip in "${DOCKER_TLS_ADDRS[@]}"; do
        if [[ $(ip route get "$ip" 2>/dev/null) != local* ]]; then
            say "docker: $ip does not bind, adding it to lo"
            ip addr add "$ip/8" dev lo
        fi
    done
}

start_dockerd() {
    ensure_loopback_addrs
    local args=(-H "unix://$DOCKER_SOCK") ip rc=0
    for ip in "${DOCKER_TLS_ADDRS[@]}"; do args+=(-H "tcp://$ip:$DOCKER_PORT"); done
    args+=(--tlsverify --tlscacert "$CERTS/client-ca.pem" --tlscert "$CERTS/server.pem" --tlskey "$CERTS/server-key.pem")
    spawn dockerd "$LOGS/dockerd.log" dockerd "${args[@]}"
    wait_ready dockerd dockerd 60 docker_ready || rc=$?
    case $rc in
        0) ;;
        2) log_tail "$LOGS/dockerd.log"; die "docker: dockerd exited while starting (log: $LOGS/dockerd.log)" ;;
        *) log_tail "$LOGS/dockerd.log"; die "docker: dockerd did not answer on $DOCKER_SOCK and TLS :$DOCKER_PORT within 60s (log: $LOGS/dockerd.log)" ;;
    esac
}

ensure_dockerd() {
    step_begin docker
    local pid
    pid=$(service_pid dockerd dockerd) || pid=
    if [ -n "$pid" ] && ! docker_ready; then
        # Ours but not (yet) answering: give a daemon that is still starting a moment.
        wait_ready dockerd dockerd 10 docker_ready || true
    fi
    if docker_unix_ok; then
        if docker_tls_ok; then
            step_end "reusing the running daemon${pid:+ (pid $pid)}"
            return
        fi
        if [ -z "$pid" ]; then
            die "docker: a Docker daemon that tests/local-ecs/up did not start answers on $DOCKER_SOCK," \
                "but not with mutual TLS on ${DOCKER_TLS_ADDRS[*]/%/:$DOCKER_PORT} (certs: $CERTS)." \
                "Stop that daemon and run tests/local-ecs/up again; it starts one with the listeners it needs."
        fi
        say "docker: our daemon (pid $pid) does not answer over TLS with the current certs, restarting it"
    fi
    [ -z "$pid" ] || stop_service dockerd dockerd 20
    start_dockerd
    step_end "started dockerd (pid $(<"$PIDS/dockerd.pid"))"
}
