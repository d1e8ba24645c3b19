#!/usr/bin/env bash
# Runs inside a clean Debian container (deploy/package/test starts it): installs
# /pkg/ecs-executor.deb and checks it as a runner admin would use it. One "ok" line per check;
# the first failure ends it with exit 1.
set -euo pipefail
fail() { echo "FAIL $*" >&2; exit 1; }
ok() { echo "ok   $*"; }
files=(/usr/bin/ecs-executor /usr/bin/ecs-executor-stage-runner /usr/bin/ecs-executor-stage-runner-arm64
    /etc/ecs-executor/config.toml
    /etc/ecs-executor/docker /lib/systemd/system/ecs-executor-gc.service
    /lib/systemd/system/ecs-executor-gc.timer /usr/share/doc/ecs-executor/README.Debian
    /usr/share/doc/ecs-executor/gitlab-runner.toml)
status() { dpkg-query -W -f='${db:Status-Abbrev}' ecs-executor 2>/dev/null | tr -d ' '; }

# A clean machine: nothing of ours yet, no systemd running (the scripts must cope).
for f in "${files[@]}"; do [ ! -e "$f" ] || fail "$f exists before the install"; done

out=$(dpkg -i /pkg/ecs-executor.deb 2>&1) || fail "dpkg -i: $out"
[ "$(status)" = ii ] || fail "status after dpkg -i is '$(status)', not ii: $out"
grep -q 'ecs-executor check' <<<"$out" || fail "postinst does not tell the admin to run ecs-executor check: $out"
ok "dpkg -i: installed; postinst says: $(grep -m1 'ecs-executor check' <<<"$out" | sed 's/^ *//')"

want="755 root root /usr/bin/ecs-executor
755 root root /usr/bin/ecs-executor-stage-runner
755 root root /usr/bin/ecs-executor-stage-runner-arm64
640 root root /etc/ecs-executor/config.toml
700 root root /etc/ecs-executor/docker
644 root root /lib/systemd/system/ecs-executor-gc.service
644 root root /lib/systemd/system/ecs-executor-gc.timer
644 root root /usr/share/doc/ecs-executor/README.Debian
644 root root /usr/share/doc/ecs-executor/gitlab-runner.toml"
got=$(stat -c '%a %U %G %n' "${files[@]}")
[ "$got" = "$want" ] || fail "installed modes/owners:
$got
want:
$want"
ok "${#files[@]} paths installed with their modes and owners"
dpkg-query -W -f='${Conffiles}\n' ecs-executor | grep -q '^ /etc/ecs-executor/config.toml [0-9a-f]\{32\}$' \
    || fail "dpkg does not record /etc/ecs-executor/config.toml as a conffile"
ok "/etc/ecs-executor/config.toml is a conffile"

# The static binaries run on a machine that has none of the build's libraries.
v=$(ecs-executor --version) || fail "ecs-executor --version: $v"
[ "$v" = "ecs-executor $PACKAGE_VERSION" ] || fail "ecs-executor --version says '$v', the package is $PACKAGE_VERSION"
v=$(ecs-executor-stage-runner --version) || fail "ecs-executor-stage-runner --version: $v"
[ "$v" = "ecs-executor-stage-runner $PACKAGE_VERSION" ] || fail "ecs-executor-stage-runner --version says '$v'"
help=$(ecs-executor --help)
for cmd in config prepare run cleanup gc check; do
    grep -qE "^  $cmd( |$)" <<<"$help" || fail "ecs-executor --help lists no '$cmd'"
done
ok "both binaries run: $(ecs-executor --version), $(ecs-executor-stage-runner --version)"

# The shipped config is valid for the shipped binary (plan reads it from the default path
# and calls no AWS).
plan=$(ecs-executor plan --job-response /pkg/job-response.json 2>&1) || fail "plan with the shipped config: $plan"
grep -q '"family"' <<<"$plan" || fail "plan printed no task definition: $plan"
ok "the shipped /etc/ecs-executor/config.toml loads (ecs-executor plan)"

# The units: what systemd would run (the host ran systemd-analyze verify on them too).
unit=/lib/systemd/system/ecs-executor-gc.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
[ "$exec_start" = "/usr/bin/ecs-executor --config /etc/ecs-executor/config.toml gc" ] \
    || fail "$unit: ExecStart=$exec_start"
grep -qx 'Type=oneshot' "$unit" || fail "$unit is not Type=oneshot"
grep -qx 'OnUnitActiveSec=10min' /lib/systemd/system/ecs-executor-gc.timer || fail "the timer does not repeat every 10 min"
grep -qx 'WantedBy=timers.target' /lib/systemd/system/ecs-executor-gc.timer || fail "the timer cannot be enabled"
ok "gc unit: oneshot, ExecStart=$exec_start; timer every 10 min, WantedBy=timers.target"

# The admin fills in the config (the stand-in's, with a host name for its endpoint), then
# runs check as the postinst says.
cp /pkg/filled.toml /etc/ecs-executor/config.toml
check=$(ecs-executor check 2>&1) || fail "ecs-executor check against the stand-in:
$check"
host=$(sed -n 's#^endpoint_url = "http://\([^:]*\):.*#\1#p' /etc/ecs-executor/config.toml)
grep -qE "^[0-9.]+[[:space:]]+$host([[:space:]]|$)" /etc/hosts || fail "$host is not in the container's /etc/hosts"
for line in "ok   config" "ok   AWS credentials and cluster local" "ok   Docker at 127.0.0.1:2376"; do
    grep -q "^$line" <<<"$check" || fail "check printed no '$line...':
$check"
done
ok "ecs-executor check passes against the stand-in through $host (/etc/hosts): $(tail -n1 <<<"$check")"
# The gc unit's own command line, as a dry run (judges nothing: this container's state
# dir names no runner).
gc=$($exec_start --dry-run 2>&1) || fail "$exec_start --dry-run: $gc"
[ "$(stat -c '%a %U' /var/lib/ecs-executor)" = "700 root" ] || fail "state dir: $(stat -c '%a %U' /var/lib/ecs-executor)"
ok "the gc unit's command runs (--dry-run); state dir /var/lib/ecs-executor 0700 root"

# Reinstall / upgrade: the admin's config stays.
out=$(dpkg -i /pkg/ecs-executor.deb 2>&1) || fail "second dpkg -i: $out"
cmp -s /pkg/filled.toml /etc/ecs-executor/config.toml || fail "reinstalling replaced the admin's config"
[ "$(stat -c '%a' /etc/ecs-executor/config.toml)" = 640 ] || fail "config mode after reinstall: $(stat -c '%a' /etc/ecs-executor/config.toml)"
ok "reinstall keeps the filled-in config (0640)"

out=$(dpkg -r ecs-executor 2>&1) || fail "dpkg -r: $out"
[ "$(status)" = rc ] || fail "status after dpkg -r is '$(status)', not rc"
for f in "${files[@]}"; do
    case $f in
        /etc/ecs-executor/config.toml) cmp -s /pkg/filled.toml "$f" || fail "dpkg -r did not keep $f" ;;
        *) [ ! -e "$f" ] || fail "$f is left after dpkg -r" ;;
    esac
done
ok "dpkg -r: binaries, units and docs gone, the conffile kept (status rc)"

out=$(dpkg --purge ecs-executor 2>&1) || fail "dpkg --purge: $out"
case "$(status)" in "" | un | pn) ;; *) fail "status after purge: '$(status)'" ;; esac
for f in /etc/ecs-executor /var/lib/ecs-executor; do [ ! -e "$f" ] || fail "$f is left after purge: $(ls -la "$f")"; done
ok "dpkg --purge: config and state dir gone"
