#!/usr/bin/env bash
# Install and start a Podman Docker-compatible API service for OpenPods (idempotent).
#
# Usage: scripts/setup-podman.sh [CONTAINERS_CONF_PATH]
#   eval "$(scripts/setup-podman.sh)"        # exports DOCKER_HOST and CONTAINERS_CONF in this shell
#
# Environment:
#   OPENPODS_PODMAN_DIR   directory for containers.conf, the socket and the service log
#                         (default: /tmp/openpods-podman)
#   OPENPODS_PODMAN_SOCK  socket path (default: $OPENPODS_PODMAN_DIR/podman.sock)
#
# What it does:
#   1. apt-get installs podman, runc, busybox-static (and curl, iptables) when one of them is missing;
#   2. writes a containers.conf that uses runc (crun fails on hybrid cgroups here), default ulimits that a
#      root without CAP_SYS_RESOURCE may set, and the file event log (no systemd journal here; OpenPods follows
#      GET /events to keep its container list current, see src/openpods/runtimes/event_cache.py);
#   3. starts `podman system service --time=0 unix://$SOCK` in the background unless the socket already answers
#      GET /_ping, and waits until it does;
#   4. prints `export DOCKER_HOST=…` and `export CONTAINERS_CONF=…` on stdout (everything else goes to stderr).
set -euo pipefail

log() { echo "setup-podman: $*" >&2; }

DIR="${OPENPODS_PODMAN_DIR:-/tmp/openpods-podman}"
CONF="${1:-$DIR/containers.conf}"
SOCK="${OPENPODS_PODMAN_SOCK:-$DIR/podman.sock}"
mkdir -p "$DIR" "$(dirname "$CONF")" "$(dirname "$SOCK")"

# --- 1. packages
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# OpenPods keeps pod bridges apart with one iptables rule (see runtimes/docker.py); podman usually brings it.
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi

# --- 2. containers.conf (rewritten only when its content changes)
want='[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
events_logger = "file"'
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
    printf '%s\n' "$want" >"$CONF.tmp.$$"
    mv -f "$CONF.tmp.$$" "$CONF"
    log "wrote $CONF"
fi
export CONTAINERS_CONF="$CONF"

# --- 3. the API service
ping() { curl -fsS --max-time 2 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if ping; then
    log "podman service already answers on $SOCK"
else
    rm -f "$SOCK"
    log "starting podman system service on unix://$SOCK (log: $DIR/podman-service.log)"
    nohup setsid podman system service --time=0 "unix://$SOCK" >>"$DIR/podman-service.log" 2>&1 </dev/null &
    echo $! >"$DIR/podman-service.pid"
    for _ in $(seq 1 300); do
        ping && break
        sleep 0.1
    done
    if ! ping; then
        log "podman service did not answer within 30 s; see $DIR/podman-service.log"
        tail -20 "$DIR/podman-service.log" >&2 || true
        exit 1
    fi
    log "podman service is up"
fi

# --- 4. what the caller needs
echo "export DOCKER_HOST=unix://$SOCK"
echo "export CONTAINERS_CONF=$CONF"
