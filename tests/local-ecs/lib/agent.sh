# The ECS agent stand-in (the workspace crate ../agent, binary ecs-agent-standin): built with
# cargo when its sources changed, run against $STATE/standin.json.

AGENT_CRATE=$LOCAL_ECS_DIR/agent
# Extra agent flags, e.g. AGENT_ARGS="--all-instances --latency realistic" for the scale
# benchmark (every container instance of the cluster served, ECS-like pull/start/report delays).
AGENT_BIN=${CARGO_TARGET_DIR:-/var/tmp/ecs-executor/target}/debug/ecs-agent-standin
# Touched after each successful build: sources newer than this mean "build again".
AGENT_BUILD_STAMP=$STATE/agent.build-stamp

agent_crate_present() { [ -f "$AGENT_CRATE/Cargo.toml" ] && [ -d "$AGENT_CRATE/src" ]; }

# Runs as a background job: prints one summary line.
build_agent() {
    if [ -x "$AGENT_BIN" ] && [ -f "$AGENT_BUILD_STAMP" ] \
        && [ -z "$(find "$AGENT_CRATE" "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" -newer "$AGENT_BUILD_STAMP" -type f -print -quit)" ]; then
        echo "$AGENT_BIN up to date"
        return
    fi
    local cargo
    cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
    (
        cd "$REPO_ROOT"
        CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/ecs-executor/target} "$cargo" build -q -p ecs-agent-standin
    ) || die "agent: cargo build -p ecs-agent-standin failed"
    touch "$AGENT_BUILD_STAMP"
    echo "built $AGENT_BIN"
}

# What the running agent was started with: a new binary or a new standin.json means a restart.
agent_stamp() {
    { stat -c '%.9Y %s %i' "$AGENT_BIN"; cat "$STATE/standin.json"; } | sha256sum | cut -d' ' -f1
}

ensure_agent() {
    step_begin agent
    local pid stamp
    stamp=$(agent_stamp)
    if pid=$(service_pid agent ecs-agent-standin); then
        if [ "$(cat "$PIDS/agent.stamp" 2>/dev/null)" = "$stamp" ]; then
            step_end "reusing the running agent (pid $pid)"
            return
        fi
        say "agent: binary or standin.json changed since pid $pid started, restarting it"
        stop_service agent ecs-agent-standin 10
    fi
    spawn agent "$LOGS/agent.log" env AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
        AWS_REGION="$REGION" AWS_DEFAULT_REGION="$REGION" AWS_EC2_METADATA_DISABLED=true \
        "$AGENT_BIN" --standin "$STATE/standin.json" ${AGENT_ARGS:-}
    echo "$stamp" >"$PIDS/agent.stamp"
    # No readiness signal to wait for; an agent that cannot start dies at once.
    sleep 0.3
    if ! service_pid agent ecs-agent-standin >/dev/null; then
        log_tail "$LOGS/agent.log"
        die "agent: ecs-agent-standin exited at start (log: $LOGS/agent.log)"
    fi
    step_end "started (pid $(<"$PIDS/agent.pid"))"
}

# The stage runner (workspace crate stage-runner): a static binary, since it runs inside job
# containers of any image (busybox, alpine, Debian). The executor config written by `up`
# points `stage_runner.binary` at it.
STAGE_RUNNER_BIN=${CARGO_TARGET_DIR:-/var/tmp/ecs-executor/target}/x86_64-unknown-linux-gnu/release/ecs-executor-stage-runner

build_stage_runner() {
    local built
    built=$(CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/ecs-executor/target} "$REPO_ROOT/stage-runner/build-static") \
        || die "stage runner: stage-runner/build-static failed"
    [ "$built" = "$STAGE_RUNNER_BIN" ] || die "stage runner: built $built, expected $STAGE_RUNNER_BIN"
    echo "$STAGE_RUNNER_BIN ready (static)"
}

# The agent and the stage runner, one after the other (they share cargo's target lock).
build_agent_and_runner() {
    build_agent
    build_stage_runner
}
