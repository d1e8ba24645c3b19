# The mutual-TLS material for the instances' Docker listeners, made by the executor's own
# `ecs-executor tls` (as a runner admin makes it, docs/deploy.md): a server CA and a client CA
# (each signs one kind of certificate only), one fleet server certificate valid for every
# address of 127.0.0.0/24 (every instance the stand-in registers has its private and public
# address there), and the runner's client certificate. Kept while valid; openssl only checks.

CERT_FILES=(server-ca.pem server-ca-key.pem client-ca.pem client-ca-key.pem
    server.pem server-key.pem client.pem client-key.pem)
# Instances get their addresses from this subnet (CONTRACT.md, "Several container instances").
CERT_IP_RANGE=127.0.0.0/24
CERT_DAYS=3650
TLS_TOOL=${CARGO_TARGET_DIR:-/var/tmp/ecs-executor/target}/debug/ecs-executor

certs_valid() {
    local f
    for f in "${CERT_FILES[@]}"; do [ -s "$CERTS/$f" ] || return 1; done
    local tomorrow=$(($(date +%s) + 86400))
    # Signed by the right CA, with the right purpose, valid for another day, for an instance
    # address beyond the first two (certificates of an older layout fail here and are remade).
    openssl verify -attime "$tomorrow" -purpose sslserver -verify_ip 127.0.0.9 \
        -CAfile "$CERTS/server-ca.pem" "$CERTS/server.pem" >/dev/null 2>&1 \
        && openssl verify -attime "$tomorrow" -purpose sslclient \
            -CAfile "$CERTS/client-ca.pem" "$CERTS/client.pem" >/dev/null 2>&1
}

# The executor binary, for `tls`: built here when absent (tests/run and the demo build the
# workspace before `up`, so this is normally a no-op).
ensure_tls_tool() {
    local cargo
    cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
    (
        cd "$REPO_ROOT"
        CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/ecs-executor/target} "$cargo" build -q -p ecs-executor --bin ecs-executor
    ) >"$LOGS/certs.log" 2>&1 || {
        log_tail "$LOGS/certs.log"
        die "certs: cargo build -p ecs-executor failed (log: $LOGS/certs.log)"
    }
}

ensure_certs() {
    step_begin certs
    if certs_valid; then
        step_end "present in $CERTS"
        return
    fi
    ensure_tls_tool
    local tmp log=$LOGS/certs.log
    tmp=$(mktemp -d "$STATE/certs.new.XXXXXX")
    # tls init refuses an existing directory's files only; it makes DIR 0700 itself.
    rmdir "$tmp"
    if ! (
        set -e
        "$TLS_TOOL" tls init --dir "$tmp" --ca-days "$CERT_DAYS" --client-days $((CERT_DAYS - 1))
        "$TLS_TOOL" tls server --dir "$tmp" --name localhost --ip-range "$CERT_IP_RANGE" --days $((CERT_DAYS - 1))
    ) >>"$log" 2>&1; then
        rm -rf "$tmp"
        log_tail "$log"
        die "certs: ecs-executor tls failed (log: $log)"
    fi
    rm -rf "$CERTS"
    mv "$tmp" "$CERTS"
    # Tests and the demo read the certificates as other users' tools might: the directory is
    # listable, the keys stay 0600 as tls wrote them.
    chmod 0755 "$CERTS"
    chmod 0644 "$CERTS"/server-ca.pem "$CERTS"/client-ca.pem "$CERTS"/server.pem "$CERTS"/client.pem
    step_end "made by ecs-executor tls in $CERTS"
}
