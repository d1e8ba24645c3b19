#!/usr/bin/env bash
# Builds ecs-executor-test/helper:1, the tests' helper image: Debian bookworm minbase with git
# and ca-certificates, made by debootstrap from the machine's Debian mirror and `docker import`.
#   helper.sh                 make the rootfs tarball if needed, then import it if needed
#   helper.sh --tarball-only  only make $STATE/images/helper.tar (needs no Docker daemon)
# The tarball stays in $STATE/images so that re-importing after a Docker wipe takes seconds,
# not a debootstrap (~80 s). Each part is redone only when its recipe changed. Prints one
# summary line on stdout; debootstrap's output goes to $STATE/logs/images.log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/state.sh"

SUITE=bookworm
DEBOOTSTRAP_ARGS=(--variant=minbase "--include=git,ca-certificates" "$SUITE")
tarball=$STATE/images/helper.tar
tar_recipe=$(printf '%s\n' debootstrap "${DEBOOTSTRAP_ARGS[@]}" | sha256sum | cut -d' ' -f1)
image_recipe=$(sha256_of "${BASH_SOURCE[0]}")
log=$LOGS/images.log
mkdir -p "$STATE/images" "$LOGS"

# One builder at a time (an `up` and a leftover background run of this script, say).
exec 8>"$STATE/images/helper.lock"
flock -w 900 8 || die "images: another helper build holds $STATE/images/helper.lock"

# The Debian mirror this machine's apt uses (deb822 .sources or one-line .list entries for
# $SUITE); DEBIAN_MIRROR overrides it.
debian_mirror() {
    local m=""
    shopt -s nullglob
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        m=$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; suites = ""; uris = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^[ \t]*#/ || $i !~ /:/) continue
                    key = tolower($i); sub(/:.*/, "", key)
                    val = $i; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "suites") suites = val
                    else if (key == "uris") uris = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f")
        [ -z "$m" ] || break
    done
    if [ -z "$m" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            m=$(awk -v suite="$SUITE" '
                $1 == "deb" {
                    i = 2
                    if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == suite) { print $i; exit }
                }' "$f")
            [ -z "$m" ] || break
        done
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

make_tarball() {
    if [ -s "$tarball" ] && [ "$(cat "$tarball.recipe" 2>/dev/null)" = "$tar_recipe" ]; then
        return 1
    fi
    local mirror=${DEBIAN_MIRROR:-$(debian_mirror)} rootfs=$STATE/rootfs/helper
    rm -rf "$rootfs" "$tarball" "$tarball.recipe"
    mkdir -p "$rootfs"
    printf '=== %s: debootstrap %s %s %s\n' "$(date -Is)" "${DEBOOTSTRAP_ARGS[*]}" "$rootfs" "$mirror" >>"$log"
    if ! debootstrap "${DEBOOTSTRAP_ARGS[@]}" "$rootfs" "$mirror" >>"$log" 2>&1; then
        log_tail "$log"
        die "images: debootstrap of $SUITE from $mirror failed (log: $log)"
    fi
    # Nothing the image needs: downloaded packages and apt lists.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/debootstrap
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    echo "$tar_recipe" >"$tarball.recipe"
    rm -rf "$rootfs"
    rmdir --ignore-fail-on-non-empty "$STATE/rootfs"
}

made=""
if make_tarball; then made="debootstrapped $tarball"; fi
if [ "${1:-}" = --tarball-only ]; then
    echo "${made:-$tarball present}"
    exit 0
fi

current=$(docker_local image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$HELPER_IMAGE" 2>/dev/null || true)
if [ "$current" = "$image_recipe" ] && [ -z "$made" ]; then
    echo "$HELPER_IMAGE present"
    exit 0
fi
old_id=$(docker_local image inspect -f '{{ .Id }}' "$HELPER_IMAGE" 2>/dev/null || true)
docker_local import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $RECIPE_LABEL=$image_recipe" \
    "$tarball" "$HELPER_IMAGE" >/dev/null
if [ -n "$old_id" ]; then docker_local image rm "$old_id" >/dev/null 2>&1 || true; fi
echo "${made:+$made, }imported $HELPER_IMAGE"
