#!/usr/bin/env bash
# Builds ecs-executor-test/build:1, the job image of the tests: Debian's static busybox as the
# whole userland (/bin/busybox plus a link for each applet, sh among them), /tmp and /var/tmp
# mode 1777, and users root and `build` (uid 1000). Made with `docker import`: no registry.
# Skips the build when the image exists and was made by this very script (label
# ecs-executor-test.recipe = sha256 of this file). Prints one summary line on stdout.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../lib/state.sh"

recipe=$(sha256_of "${BASH_SOURCE[0]}")
current=$(docker_local image inspect -f "{{ index .Config.Labels \"$RECIPE_LABEL\" }}" "$BUILD_IMAGE" 2>/dev/null || true)
if [ "$current" = "$recipe" ]; then
    echo "$BUILD_IMAGE present"
    exit 0
fi
old_id=$(docker_local image inspect -f '{{ .Id }}' "$BUILD_IMAGE" 2>/dev/null || true)

busybox=/bin/busybox # from busybox-static: a static binary that runs in an empty rootfs
[ -x "$busybox" ] || die "images: $busybox is missing (apt-get install busybox-static)"

root=$STATE/rootfs/build
rm -rf "$root"
mkdir -p "$root"
(
    cd "$root"
    mkdir -p bin sbin usr/bin usr/sbin etc root home/build tmp var/tmp
    cp "$busybox" bin/busybox
    chmod 0755 bin/busybox
    # Each applet at the path busybox itself names (bin/sh, usr/bin/env, ...).
    "$busybox" --list-full | while read -r applet; do
        [ -e "$applet" ] || ln -s /bin/busybox "$applet"
    done
    [ -L bin/sh ] || die "images: busybox has no sh applet"
    chmod 1777 tmp var/tmp
    chmod 0700 root
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'build:x:1000:1000:build:/home/build:/bin/sh' >etc/passwd
    printf '%s\n' 'root:x:0:' 'build:x:1000:' >etc/group
    chown 1000:1000 home/build
)

tar --numeric-owner -C "$root" -c . | docker_local import \
    --change 'CMD ["sh"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL $RECIPE_LABEL=$recipe" \
    - "$BUILD_IMAGE" >/dev/null
rm -rf "$root"
rmdir --ignore-fail-on-non-empty "$STATE/rootfs"
# The previous build of this tag, now untagged (kept if a container still uses it).
if [ -n "$old_id" ]; then docker_local image rm "$old_id" >/dev/null 2>&1 || true; fi
echo "$BUILD_IMAGE built"
