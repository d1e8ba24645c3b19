#!/usr/bin/env bash
# Builds the service images of the services tests, all from Debian's static busybox with
# `docker import` (no registry):
#   ecs-executor-test/svc-echo:1    EXPOSE 6379/tcp; listens on $PORT (default 6379) and
#                                   answers every connection with "hello from <its hostname>",
#                                   its argv and its environment (sorted), then closes.
#   ecs-executor-test/svc-silent:1  EXPOSE 7777/tcp; prints a line and never opens a port.
#   ecs-executor-test/helper-runner:1  the helper image plus a stand-in
#                                   /usr/bin/gitlab-runner-helper (as GitLab's helper images
#                                   ship it; prints "gitlab-runner-helper stand-in" and its args).
# Skips what exists and was made by this very script (label ecs-executor-test.recipe). Prints
# one summary line on stdout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/state.sh"

ECHO_IMAGE=ecs-executor-test/svc-echo:1
SILENT_IMAGE=ecs-executor-test/svc-silent:1
HELPER_RUNNER_IMAGE=ecs-executor-test/helper-runner:1

recipe=$(sha256_of "${BASH_SOURCE[0]}")
current() { docker_local image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$1" 2>/dev/null || true; }
done_list=()

busybox=/bin/busybox
[ -x "$busybox" ] || die "images: $busybox is missing (apt-get install busybox-static)"

rootfs() {
    local root=$1
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,tmp}
    cp "$busybox" "$root/bin/busybox"
    "$busybox" --list-full | while read -r applet; do
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    chmod 1777 "$root/tmp"
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' >"$root/etc/group"
}

import() {
    local root=$1 image=$2
    shift 2
    local old_id
    old_id=$(docker_local image inspect -f '{{ .Id }}' "$image" 2>/dev/null || true)
    local changes=()
    for c in "$@"; do changes+=(--change "$c"); done
    tar --numeric-owner -C "$root" -c . | docker_local import "${changes[@]}" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL $RECIPE_LABEL=$recipe" - "$image" >/dev/null
    if [ -n "$old_id" ]; then docker_local image rm "$old_id" >/dev/null 2>&1 || true; fi
    done_list+=("$image")
}

if [ "$(current "$ECHO_IMAGE")" != "$recipe" ]; then
    root=$STATE/rootfs/svc-echo
    rootfs "$root"
    cat >"$root/usr/local/bin/svc-echo" <<'SH'
#!/bin/sh
# The service: one reply per connection, forever.
echo "svc-echo: listening on ${PORT:-6379} (args: $*)"
export SVC_ARGS="$*"
exec nc -ll -p "${PORT:-6379}" -e /usr/local/bin/svc-reply
SH
    cat >"$root/usr/local/bin/svc-reply" <<'SH'
#!/bin/sh
echo "hello from $(hostname)"
echo "args: $SVC_ARGS"
env | sort | sed 's/^/env: /'
SH
    chmod 0755 "$root/usr/local/bin/svc-echo" "$root/usr/local/bin/svc-reply"
    import "$root" "$ECHO_IMAGE" 'EXPOSE 6379/tcp' 'ENTRYPOINT ["/usr/local/bin/svc-echo"]' 'CMD ["--from-image-cmd"]'
    rm -rf "$root"
fi

if [ "$(current "$SILENT_IMAGE")" != "$recipe" ]; then
    root=$STATE/rootfs/svc-silent
    rootfs "$root"
    import "$root" "$SILENT_IMAGE" 'EXPOSE 7777/tcp' \
        'CMD ["sh", "-c", "echo svc-silent: starting but never listening on 7777; echo svc-silent: secret is $SILENT_SECRET; exec sleep 86400"]'
    rm -rf "$root"
fi

if [ "$(current "$HELPER_RUNNER_IMAGE")" != "$recipe" ]; then
    docker_local image inspect "$HELPER_IMAGE" >/dev/null 2>&1 || die "images: $HELPER_IMAGE must be built first"
    ctx=$STATE/rootfs/helper-runner
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cat >"$ctx/gitlab-runner-helper" <<'SH'
#!/bin/sh
echo "gitlab-runner-helper stand-in: $*"
SH
    printf '%s\n' "FROM $HELPER_IMAGE" 'COPY gitlab-runner-helper /usr/bin/gitlab-runner-helper' \
        'RUN chmod 0755 /usr/bin/gitlab-runner-helper' "LABEL $RECIPE_LABEL=$recipe" >"$ctx/Dockerfile"
    old_id=$(docker_local image inspect -f '{{ .Id }}' "$HELPER_RUNNER_IMAGE" 2>/dev/null || true)
    DOCKER_BUILDKIT=0 docker_local build -q -t "$HELPER_RUNNER_IMAGE" "$ctx" >/dev/null
    if [ -n "$old_id" ]; then docker_local image rm "$old_id" >/dev/null 2>&1 || true; fi
    rm -rf "$ctx"
    done_list+=("$HELPER_RUNNER_IMAGE")
fi
rmdir --ignore-fail-on-non-empty "$STATE/rootfs" 2>/dev/null || true

if [ ${#done_list[@]} -eq 0 ]; then
    echo "service images present"
else
    echo "built ${done_list[*]}"
fi
