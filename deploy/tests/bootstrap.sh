#!/usr/bin/env bash
# Runs the container instances' user data — as moto's CloudFormation rendered it into the
# launch template — for real, as root, in its own network and mount namespace:
#   - /etc is an overlay, so every file it writes lands in $WORK/upper and the host's /etc
#     is untouched; systemctl and dnf are stubs that record their arguments;
#   - `aws ssm get-parameter` is a shim that asks moto from the outer netns (where `ecs-executor tls put-ssm` put
#     the certificates) with boto3;
#   - iptables is real (the namespace's own tables), and a veth "docker0" with a container
#     namespace behind it, plus a fake metadata service at 169.254.169.254 in a third
#     namespace, show that a container cannot reach the metadata service nor the instance's
#     2376 while the instance itself can.
# Usage: bootstrap.sh USER_DATA TLS_DIR MOTO_ENDPOINT PYTHON
set -euo pipefail
USER_DATA=$1 TLS=$2 ENDPOINT=$3 PY=$4
[ "$(id -u)" = 0 ] || { echo "FAIL bootstrap.sh needs root (network and mount namespaces, iptables)"; exit 1; }
WORK=$(mktemp -d /tmp/ecs-executor-bootstrap.XXXXXX)
NS="ecsx-$$"
cleanup() {
    ip netns del "$NS-ctr" 2>/dev/null || true
    ip netns del "$NS-imds" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fails=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi; }

mkdir -p "$WORK"/{upper,work,bin}
cat >"$WORK/bin/systemctl" <<EOF
#!/bin/sh
echo "systemctl \$*" >>"$WORK/systemctl.log"
EOF
cat >"$WORK/bin/dnf" <<EOF
#!/bin/sh
echo "dnf \$*" >>"$WORK/dnf.log"
EOF
# The shim runs in this script's network namespace (where moto listens), not the instance's.
cat >"$WORK/bin/aws" <<EOF
#!/bin/sh
exec nsenter --net=/proc/$$/ns/net "$PY" "$WORK/aws.py" "\$@"
EOF
cat >"$WORK/aws.py" <<EOF
# aws ssm get-parameter --region R --with-decryption --name N --query Parameter.Value --output text
import sys, boto3
a = sys.argv[1:]
assert a[:2] == ["ssm", "get-parameter"], a
arg = lambda k: a[a.index(k) + 1]
assert "--with-decryption" in a and arg("--query") == "Parameter.Value" and arg("--output") == "text", a
ssm = boto3.client("ssm", endpoint_url="$ENDPOINT", region_name=arg("--region"),
                   aws_access_key_id="test", aws_secret_access_key="test")
print(ssm.get_parameter(Name=arg("--name"), WithDecryption=True)["Parameter"]["Value"])
EOF
chmod +x "$WORK"/bin/*

# The namespaces: this script's "instance" (a new netns), a container behind docker0, the
# metadata service behind eth0.
ip netns add "$NS-ctr"
ip netns add "$NS-imds"
cat >"$WORK/instance.sh" <<'EOF'
set -euo pipefail
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$WORK/upper,workdir=$WORK/work" /etc
ip link set lo up
ip link add docker0 type veth peer name ctr0
ip link set ctr0 netns "$NS-ctr"
ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up
ip netns exec "$NS-ctr" sh -c 'ip link set lo up; ip addr add 172.17.0.2/16 dev ctr0; ip link set ctr0 up; ip route add default via 172.17.0.1'
ip link add eth0 type veth peer name imds0
ip link set imds0 netns "$NS-imds"
ip addr add 169.254.0.1/16 dev eth0 && ip link set eth0 up
ip netns exec "$NS-imds" sh -c 'ip link set lo up; ip addr add 169.254.169.254/16 dev imds0; ip link set imds0 up; ip route add 172.17.0.0/16 via 169.254.0.1'
sysctl -qw net.ipv4.ip_forward=1

# Control: before the user data, the container does reach the metadata service (so "closed"
# afterwards is the rule's doing, not a broken test network).
ip netns exec "$NS-imds" "$PY" -c '
import http.server
http.server.HTTPServer(("169.254.169.254", 80), http.server.SimpleHTTPRequestHandler).serve_forever()' &
imds=$!
sleep 0.5
echo "before: container->imds $(ip netns exec "$NS-ctr" "$PY" -c "import socket; socket.create_connection(('169.254.169.254', 80), timeout=2)" 2>/dev/null && echo open || echo closed)" >>"$WORK/reach"
kill $imds; wait $imds 2>/dev/null || true

PATH="$WORK/bin:$PATH" bash "$USER_DATA" >"$WORK/user-data.log" 2>&1
# What Docker does when it starts: jump from FORWARD to DOCKER-USER (which it leaves alone).
iptables -I FORWARD 1 -j DOCKER-USER
iptables-save >"$WORK/iptables.live"

# The fake metadata service and a stand-in for dockerd's 2376.
ip netns exec "$NS-imds" "$PY" -c '
import http.server
http.server.HTTPServer(("169.254.169.254", 80), http.server.SimpleHTTPRequestHandler).serve_forever()' &
imds=$!
"$PY" -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 2376)); s.listen()
while True: s.accept()[0].close()' &
dockerd=$!
sleep 1
probe() { "$PY" -c "import socket,sys; socket.create_connection(('$1', $2), timeout=2)" 2>/dev/null && echo open || echo closed; }
echo "instance->imds $(probe 169.254.169.254 80)" >>"$WORK/reach"
echo "container->imds $(ip netns exec "$NS-ctr" bash -c "$(declare -f probe); PY=$PY; probe 169.254.169.254 80")" >>"$WORK/reach"
echo "instance->2376 $(probe 172.17.0.1 2376)" >>"$WORK/reach"
echo "container->2376 $(ip netns exec "$NS-ctr" bash -c "$(declare -f probe); PY=$PY; probe 172.17.0.1 2376")" >>"$WORK/reach"
kill $imds $dockerd
EOF
export WORK NS USER_DATA PY
if ! unshare --net --mount --propagation private bash "$WORK/instance.sh"; then
    echo "FAIL the user data failed in the namespace:"; cat "$WORK/user-data.log" 2>/dev/null; exit 1
fi
U=$WORK/upper
cat "$WORK/reach"

check "the user data ran to its end" "grep -q 'ecs-executor bootstrap: done for cluster ci' '$WORK/user-data.log'"
check "ecs.config: cluster, privileged off, host-port range, reserved 2376" \
    "grep -qx ECS_CLUSTER=ci $U/ecs/ecs.config && grep -qx ECS_DISABLE_PRIVILEGED=true $U/ecs/ecs.config \
     && grep -qx ECS_DYNAMIC_HOST_PORT_RANGE=30000-32767 $U/ecs/ecs.config && grep -q '^ECS_RESERVED_PORTS=.*2376' $U/ecs/ecs.config \
     && grep -qx ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION=15m $U/ecs/ecs.config"
check "daemon.json: tlsverify and the three files, no hosts" \
    "$PY -c \"import json,sys; d=json.load(open('$U/docker/daemon.json')); sys.exit(not (d['tlsverify'] is True and 'hosts' not in d and d['tlscacert']=='/etc/docker/tls/client-ca.pem'))\""
check "TLS files are the ones put into SSM (the CLI adds a newline)" \
    "$PY -c \"import sys; same=lambda a,b: open(a).read().strip()==open(b).read().strip(); sys.exit(not all(same('$U/docker/tls/'+a, '$TLS/'+b) for a,b in [('client-ca.pem','client-ca.pem'),('server.pem','server.pem'),('server-key.pem','server-key.pem')]))\""
check "key 0400, directory 0700" "[ \$(stat -c %a $U/docker/tls/server-key.pem) = 400 ] && [ \$(stat -c %a $U/docker/tls) = 700 ]"
check "server certificate chains to the server CA for serverAuth; the runner's to the client CA dockerd trusts" \
    "openssl verify -purpose sslserver -verify_ip 10.0.1.4 -CAfile $TLS/server-ca.pem $U/docker/tls/server.pem >/dev/null \
     && ! openssl verify -purpose sslserver -verify_ip 10.0.2.4 -CAfile $TLS/server-ca.pem $U/docker/tls/server.pem >/dev/null 2>&1 \
     && openssl verify -purpose sslclient -CAfile $U/docker/tls/client-ca.pem $TLS/client.pem >/dev/null \
     && ! openssl verify -CAfile $U/docker/tls/client-ca.pem $U/docker/tls/server.pem >/dev/null 2>&1"
check "the TCP listener is an extra -H flag beside the packaged ones (OPTIONS kept)" \
    "grep -qx 'OPTIONS=\"--default-ulimit nofile=32768:65536 -H tcp://0.0.0.0:2376\"' $U/sysconfig/docker-tcp \
     && grep -qx 'EnvironmentFile=/etc/sysconfig/docker-tcp' $U/systemd/system/docker.service.d/ecs-executor-tls.conf \
     && ! grep -q ExecStart $U/systemd/system/docker.service.d/ecs-executor-tls.conf"
check "systemd: daemon-reload, docker and ecs restarted with --no-block only, iptables enabled" \
    "grep -qx 'systemctl daemon-reload' $WORK/systemctl.log && grep -qx 'systemctl restart docker --no-block' $WORK/systemctl.log \
     && grep -qx 'systemctl enable --now --no-block ecs.service' $WORK/systemctl.log && grep -qx 'systemctl enable iptables' $WORK/systemctl.log \
     && ! grep -E 'restart|start' $WORK/systemctl.log | grep -vq -- --no-block"
check "iptables rules persisted for the next boot" \
    "grep -q -- '-A DOCKER-USER -d 169.254.169.254/32 -i docker+ -j DROP' $U/sysconfig/iptables \
     && grep -q -- '-A INPUT -i docker+ -p tcp -m tcp --dport 2376 -j DROP' $U/sysconfig/iptables"
check "the instance reaches the metadata service and its own 2376" "grep -qx 'instance->imds open' $WORK/reach && grep -qx 'instance->2376 open' $WORK/reach"
check "before the user data a container reached the metadata service (control)" "grep -qx 'before: container->imds open' $WORK/reach"
check "a container reaches neither" "grep -qx 'container->imds closed' $WORK/reach && grep -qx 'container->2376 closed' $WORK/reach"
check "the host's /etc was not touched" "[ ! -e /etc/ecs/ecs.config ] || ! grep -qx ECS_CLUSTER=ci /etc/ecs/ecs.config"
[ "$fails" -eq 0 ] || { echo "--- user data log"; cat "$WORK/user-data.log"; echo "bootstrap: $fails check(s) failed"; exit 1; }
echo "bootstrap: all checks passed"
