# What the stand-in needs installed: Debian packages and the python venv for moto.

APT_UPDATED=0

# ensure_apt_packages PACKAGE...: installs those that are missing, non-interactively
# (apt-get update first, once per run, and only when something is missing).
ensure_apt_packages() {
    step_begin packages
    local missing=() pkg installed
    installed=" $(dpkg-query -W -f='${db:Status-Abbrev}${Package} ' "$@" 2>/dev/null | tr -s ' ' | sed 's/ii /ii:/g' || true) "
    for pkg in "$@"; do
        [[ $installed == *" ii:$pkg "* ]] || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        step_end "$* present"
        return
    fi
    say "packages: installing ${missing[*]}"
    local log=$LOGS/apt.log
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -q >>"$log" 2>&1 || { log_tail "$log"; die "apt-get update failed (log: $log)"; }
        APT_UPDATED=1
    fi
    # docker.io's postinst would start a daemon of its own (no TLS listeners); deny service
    # starts during the install unless this machine already has a policy for that.
    local policy=/usr/sbin/policy-rc.d ours=0 rc=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# Temporary, from tests/local-ecs/up: no service starts during apt-get install.\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        ours=1
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$log" 2>&1 || rc=$?
    if [ "$ours" -eq 1 ]; then rm -f "$policy"; fi
    if [ "$rc" -ne 0 ]; then
        log_tail "$log"
        die "apt-get install ${missing[*]} failed (log: $log)"
    fi
    step_end "installed ${missing[*]}"
}

# Whether a venv for moto can be made without Debian's python3-venv.
venv_needs_package() {
    [ ! -x "$STATE/venv/bin/python" ] && ! python3 -c 'import venv, ensurepip' 2>/dev/null
}

# The interpreter for the venv: the one on PATH when it can make venvs, else Debian's.
venv_python() {
    if python3 -c 'import venv, ensurepip' 2>/dev/null; then echo python3; else echo /usr/bin/python3; fi
}

# venv_stamp VENV REQUIREMENTS: what the installed venv corresponds to; it covers the
# interpreter too, so a venv whose python broke or changed is made anew.
venv_stamp() {
    { cat "$2" && "$1/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

venv_current() {
    local venv=$STATE/venv want
    [ -x "$venv/bin/python" ] && want=$(venv_stamp "$venv" "$LOCAL_ECS_DIR/moto/requirements.txt" 2>/dev/null) \
        && [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" = "$want" ]
}

# Creates $STATE/venv and installs moto's requirements; re-installs only when
# requirements.txt (or the interpreter) changed since the last successful install.
ensure_venv() {
    local req=$LOCAL_ECS_DIR/moto/requirements.txt venv=$STATE/venv log=$LOGS/venv.log
    local stamp=$venv/.requirements.sha256
    [ -f "$req" ] || die "venv: $req is missing"
    if venv_current; then
        echo "up to date"
        return
    fi
    {
        "$venv/bin/python" -c '' 2>/dev/null || "$(venv_python)" -m venv --clear "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r "$req"
    } >"$log" 2>&1 || { log_tail "$log"; die "venv: pip install -r $req failed (log: $log)"; }
    venv_stamp "$venv" "$req" >"$stamp"
    echo "installed $req"
}
