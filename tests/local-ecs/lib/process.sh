# The stand-in's background services (dockerd, moto, the agent): started detached from the
# caller, remembered by pid file, and stopped only by the pid `up` wrote.

# Close every descriptor above stderr in this (sub)shell.
close_inherited_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd"/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
}

# spawn NAME LOG CMD...: run CMD in its own session with stdin from /dev/null, stdout and
# stderr appended to LOG and no other inherited descriptor (a caller's pipe or our lock must
# not stay open in a daemon: `up | cat` has to return). Writes $PIDS/NAME.pid.
spawn() {
    local name=$1 log=$2
    shift 2
    mkdir -p "$PIDS" "$(dirname "$log")"
    printf '=== %s: started by tests/local-ecs/up: %s\n' "$(date -Is)" "$*" >>"$log"
    (
        close_inherited_fds
        cd "$STATE" || exit 1 # never pin the caller's directory
        # Not a process-group leader (no job control here), so setsid execs without forking
        # and $! below is the service's own pid.
        exec setsid "$@" </dev/null >>"$log" 2>&1
    ) &
    local pid=$! i
    # Until the subshell has exec'ed, its command line is ours, not the service's: wait for
    # that so that service_pid recognises it from the start.
    for ((i = 0; i < 200; i++)); do
        [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" != "$(readlink "/proc/$$/exe")" ] && break
        sleep 0.01
    done
    echo "$pid" >"$PIDS/$name.pid"
}

# service_pid NAME MATCH: print the pid from $PIDS/NAME.pid if that process is alive and its
# command line contains MATCH (a recycled pid is never taken for ours).
service_pid() {
    local file=$PIDS/$1.pid pid state
    [ -s "$file" ] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    state=$(awk '/^State:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
    echo "$pid"
}

process_gone() {
    local state
    state=$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null) || return 0
    [ -z "$state" ] || [ "$state" = Z ]
}

# stop_service NAME MATCH GRACE_SECONDS: TERM, wait up to GRACE, then KILL the process named
# by $PIDS/NAME.pid (only if it is still ours), and remove the pid file. Idempotent.
stop_service() {
    local name=$1 match=$2 grace=$3 pid i
    if pid=$(service_pid "$name" "$match"); then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 20; i++)); do
            process_gone "$pid" && break
            sleep 0.05
        done
        if ! process_gone "$pid"; then
            say "$name: pid $pid still running after ${grace}s, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                process_gone "$pid" && break
                sleep 0.05
            done
        fi
        say "$name: stopped pid $pid"
    fi
    rm -f "$PIDS/$name.pid" "$PIDS/$name.stamp"
}

# wait_ready NAME MATCH SECONDS CHECK...: poll CHECK every 50 ms until it succeeds (0); give up
# when the service NAME has died (2) or after SECONDS (1).
wait_ready() {
    local name=$1 match=$2 limit=$3 i
    shift 3
    for ((i = 0; i < limit * 20; i++)); do
        if "$@"; then return 0; fi
        service_pid "$name" "$match" >/dev/null || return 2
        sleep 0.05
    done
    return 1
}

# Steps of `up` that run in the background while others go on (pip, debootstrap, cargo).
# job_start NAME CMD...: stdout (its last line is the summary) to $JOBS/NAME.out, stderr to
# $LOGS/NAME.log; job_wait NAME reports it or fails with the log's tail.
declare -A JOB_PID=() JOB_T0=()
job_start() {
    local name=$1
    shift
    JOB_T0[$name]=$(now)
    (
        close_inherited_fds
        "$@"
        since "${JOB_T0[$name]}" >"$JOBS/$name.took"
    ) </dev/null >"$JOBS/$name.out" 2>"$LOGS/$name.log" &
    JOB_PID[$name]=$!
}

job_wait() {
    local name=$1 rc=0
    wait "${JOB_PID[$name]}" || rc=$?
    unset "JOB_PID[$name]"
    if [ "$rc" -ne 0 ]; then
        log_tail "$LOGS/$name.log"
        die "$name: failed (exit $rc; log: $LOGS/$name.log)"
    fi
    say "$name: $(tail -n 1 "$JOBS/$name.out") ($(<"$JOBS/$name.took") in the background)"
}

# Ends the jobs still running (and everything they started) when `up` fails midway.
job_kill_all() {
    local name pid all=() more
    for name in "${!JOB_PID[@]}"; do
        pid=${JOB_PID[$name]}
        mapfile -t more < <(descendants "$pid")
        all+=("$pid" "${more[@]}")
    done
    [ ${#all[@]} -eq 0 ] || kill -TERM "${all[@]}" 2>/dev/null || true
}

descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}
