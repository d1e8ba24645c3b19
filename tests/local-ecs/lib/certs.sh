# The mutual-TLS material for dockerd's TCP listeners: one CA, one server certificate valid
# for both instance IPs, one client certificate. Made once with openssl; kept until expiry.

CERT_FILES=(ca.pem ca-key.pem server.pem server-key.pem client.pem client-key.pem)
CERT_DAYS=3650

certs_valid() {
    local f
    for f in "${CERT_FILES[@]}"; do [ -s "$CERTS/$f" ] || return 1; done
    # Signed by our CA and valid for at least another day.
    openssl verify -attime $(($(date +%s) + 86400)) -CAfile "$CERTS/ca.pem" "$CERTS/server.pem" "$CERTS/client.pem" >/dev/null 2>&1
}

ensure_certs() {
    step_begin certs
    if certs_valid; then
        step_end "present in $CERTS"
        return
    fi
    local tmp log=$LOGS/certs.log
    tmp=$(mktemp -d "$STATE/certs.new.XXXXXX")
    if ! (
        set -e
        umask 077
        cd "$tmp"
        key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

        key ca-key.pem
        openssl req -x509 -new -key ca-key.pem -sha256 -days "$CERT_DAYS" \
            -subj "/CN=ecs-executor local-ecs CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem

        # issue NAME CN EXTENSIONS: a leaf certificate signed by the CA.
        issue() {
            key "$1-key.pem"
            openssl req -new -key "$1-key.pem" -subj "/CN=$2" -out "$1.csr"
            printf '%s\n' "basicConstraints=critical,CA:FALSE" \
                "keyUsage=critical,digitalSignature" "${@:3}" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
                -sha256 -days "$CERT_DAYS" -extfile "$1.ext" -out "$1.pem"
        }
        issue server localhost "extendedKeyUsage=serverAuth" \
            "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost"
        issue client ecs-executor-client "extendedKeyUsage=clientAuth"

        rm -f ./*.csr ./*.ext ./*.srl
        chmod 0600 ./*-key.pem
        chmod 0644 ca.pem server.pem client.pem
    ) >"$log" 2>&1; then
        rm -rf "$tmp"
        log_tail "$log"
        die "certs: openssl failed (log: $log)"
    fi
    rm -rf "$CERTS"
    mv "$tmp" "$CERTS"
    chmod 0755 "$CERTS"
    step_end "generated in $CERTS"
}
