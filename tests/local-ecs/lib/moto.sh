# The ECS/EC2 API: moto in server mode with our patch layer (../moto/standin_moto.py), and the
# one-instance cluster `local` seeded into it.

MOTO_SCRIPT=$LOCAL_ECS_DIR/moto/standin_moto.py
MOTO_STARTED=0

moto_ok() {
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$MOTO_ENDPOINT/moto-api/" 2>/dev/null) || true
    [ -n "$code" ] && [ "$code" != 000 ]
}

# What the running server was made from: a changed patch layer or venv means a restart.
moto_stamp() {
    { cat "$LOCAL_ECS_DIR"/moto/*.py "$STATE/venv/.requirements.sha256"; echo "$MOTO_PORT"; } | sha256sum | cut -d' ' -f1
}

# start_moto: reuse our running, current server or start one; wait_moto (later, so that
# moto's ~2-4 s of imports overlap with dockerd and the images) waits until it answers.
start_moto() {
    step_begin moto
    [ -f "$MOTO_SCRIPT" ] || die "moto: $MOTO_SCRIPT is missing"
    local pid stamp
    stamp=$(moto_stamp)
    if pid=$(service_pid moto standin_moto.py); then
        if [ "$(cat "$PIDS/moto.stamp" 2>/dev/null)" = "$stamp" ] && wait_ready moto standin_moto.py 10 moto_ok; then
            step_end "reusing the running server (pid $pid)"
            return
        fi
        say "moto: the running server (pid $pid) is stale or not answering, restarting it"
        stop_service moto standin_moto.py 10
    elif moto_ok; then
        die "moto: something that tests/local-ecs/up did not start answers on $MOTO_ENDPOINT;" \
            "stop it (or set MOTO_PORT to a free port) and run tests/local-ecs/up again"
    fi
    MOTO_STARTED=1
    spawn moto "$LOGS/moto.log" env PYTHONUNBUFFERED=1 MOTO_PORT="$MOTO_PORT" \
        AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION="$REGION" \
        "$STATE/venv/bin/python" "$MOTO_SCRIPT" --host 127.0.0.1 --port "$MOTO_PORT"
    echo "$stamp" >"$PIDS/moto.stamp"
    step_end "starting on $MOTO_ENDPOINT (pid $(<"$PIDS/moto.pid"))"
}

wait_moto() {
    [ "$MOTO_STARTED" -eq 1 ] || return 0
    step_begin moto
    local rc=0
    wait_ready moto standin_moto.py 30 moto_ok || rc=$?
    case $rc in
        0) ;;
        2) log_tail "$LOGS/moto.log"; die "moto: the server exited while starting (log: $LOGS/moto.log)" ;;
        *) log_tail "$LOGS/moto.log"; die "moto: no answer on $MOTO_ENDPOINT within 30s (log: $LOGS/moto.log)" ;;
    esac
    step_end "answering (waited for it)"
}

# Whether the server still has the container instance of the last seeding (a test may have
# reset moto since): one DescribeContainerInstances with curl instead of seed.py's ~1 s.
seeded_instance_active() {
    local arn reply
    arn=$(sed -n 's/.*"container_instance_arn": *"\([^"]*\)".*/\1/p' "$STATE/seed.json" 2>/dev/null) || return 1
    [ -n "$arn" ] || return 1
    reply=$(curl -sf --max-time 3 "$MOTO_ENDPOINT/" \
        -H 'X-Amz-Target: AmazonEC2ContainerServiceV20141113.DescribeContainerInstances' \
        -H 'Content-Type: application/x-amz-json-1.1' \
        -H "Authorization: AWS4-HMAC-SHA256 Credential=test/20250101/$REGION/ecs/aws4_request, SignedHeaders=host, Signature=0" \
        -d "{\"cluster\":\"$CLUSTER\",\"containerInstances\":[\"$arn\"]}") || return 1
    [[ $reply == *"\"containerInstanceArn\": \"$arn\""* && $reply == *'"status": "ACTIVE"'* ]]
}

# Creates what is missing of cluster `local` and its instance; the result (ARNs, ids, IPs) as
# JSON in $STATE/seed.json.
seed_moto() {
    step_begin seed
    local log=$LOGS/seed.log
    if [ "$MOTO_STARTED" -eq 0 ] && seeded_instance_active; then
        step_end "cluster $CLUSTER and its container instance still there"
        return
    fi
    if ! "$STATE/venv/bin/python" "$LOCAL_ECS_DIR/moto/seed.py" --endpoint "$MOTO_ENDPOINT" --region "$REGION" \
        >"$STATE/seed.json.tmp" 2>"$log"; then
        log_tail "$log"
        die "seed: $LOCAL_ECS_DIR/moto/seed.py failed (log: $log)"
    fi
    mv "$STATE/seed.json.tmp" "$STATE/seed.json"
    step_end "cluster $CLUSTER with one container instance"
}
