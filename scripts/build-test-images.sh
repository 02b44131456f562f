#!/usr/bin/env bash
# Build the small busybox-based test images with Podman, from the busybox-static binary on this machine
# (no registry is needed or contacted).
#
# Usage: scripts/build-test-images.sh [--force]
#   --force   rebuild every image even if it exists with the current version label
#
# Builds with podman (respects CONTAINERS_CONF, see scripts/setup-podman.sh); with OPENPODS_IMAGE_BUILDER=docker,
# or when only the docker CLI is installed, with `docker import` on the engine at DOCKER_HOST instead.
# Images (all tagged :latest):
#   localhost/openpods-test/busybox  idles (sleep loop), stops at once on SIGTERM
#   localhost/openpods-test/http     busybox httpd on port 5000 serving /www ("hello from openpods")
#   localhost/openpods-test/echo     TCP echo server on port 7000 (busybox nc -ll -e cat)
#   localhost/openpods-test/exit0    prints "exit0: done" and exits 0
#   localhost/openpods-test/exit1    prints "exit1: failing" and exits 1
#   localhost/openpods-test/chatty   prints ~5 MB ("chatty: start" ... "chatty: end of output"), then idles
# Each image has the label openpods.test-image-version; an image with an older version is rebuilt.
set -euo pipefail

VERSION=3
PREFIX="localhost/openpods-test"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

log() { echo "build-test-images: $*" >&2; }

BUILDER="${OPENPODS_IMAGE_BUILDER:-}"
if [ -z "$BUILDER" ]; then
  if command -v podman >/dev/null 2>&1; then BUILDER=podman
  elif command -v docker >/dev/null 2>&1; then BUILDER=docker
  else log "neither podman nor docker is installed (run scripts/setup-podman.sh)"; exit 1
  fi
fi
command -v "$BUILDER" >/dev/null 2>&1 || { log "$BUILDER is not installed"; exit 1; }

# Idle until SIGTERM/SIGINT; a shell with a trap is a PID 1 that honours SIGTERM (plain sleep/httpd do not).
IDLE='trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'

# name|command (run with sh -c)
IMAGES=(
  "busybox|$IDLE"
  "http|trap \"exit 0\" TERM INT; echo \"http: serving /www on port 5000\"; httpd -f -vv -p 5000 -h /www & wait \$!"
  "echo|trap \"exit 0\" TERM INT; echo \"echo: listening on port 7000\"; nc -ll -p 7000 -e cat & wait \$!"
  "exit0|echo \"exit0: done\"; exit 0"
  "exit1|echo \"exit1: failing\"; echo \"exit1: error on stderr\" >&2; exit 1"
  "chatty|echo \"chatty: start\"; yes \"chatty: the quick brown fox jumps over the lazy dog, again and again and again.\" | head -n 60000; echo \"chatty: end of output\"; $IDLE"
)

image_current() {
  local ref="$1" v
  "$BUILDER" image inspect "$ref" >/dev/null 2>&1 || return 1
  v="$("$BUILDER" image inspect --format '{{ index .Config.Labels "openpods.test-image-version" }}' "$ref" 2>/dev/null || true)"
  [ "$v" = "$VERSION" ]
}

todo=()
for entry in "${IMAGES[@]}"; do
  name="${entry%%|*}"
  if [ "$FORCE" = 1 ] || ! image_current "$PREFIX/$name:latest"; then
    todo+=("$entry")
  fi
done
if [ "${#todo[@]}" -eq 0 ]; then
  log "all test images are present (version $VERSION)"
  exit 0
fi

# --- a busybox root filesystem
BB=""
for candidate in /bin/busybox /usr/bin/busybox; do
  if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then BB="$candidate"; break; fi
done
if [ -z "$BB" ]; then
  log "no statically linked busybox found: apt-get install -y busybox-static"
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
R="$WORK/rootfs"
mkdir -p "$R/bin" "$R/usr/bin" "$R/sbin" "$R/etc" "$R/www" "$R/tmp" "$R/root" "$R/var/tmp" "$R/proc" "$R/sys" "$R/dev"
chmod 1777 "$R/tmp" "$R/var/tmp"
cp "$BB" "$R/bin/busybox"
for applet in $("$BB" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$R/bin/$applet"
done
ln -sf ../../bin/busybox "$R/usr/bin/env"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$R/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
echo "hello from openpods" >"$R/www/index.html"
tar -C "$R" --numeric-owner --owner=0 --group=0 -cf "$WORK/rootfs.tar" .

for entry in "${todo[@]}"; do
  name="${entry%%|*}"
  cmd="${entry#*|}"
  ref="$PREFIX/$name:latest"
  # CMD in JSON form: ["sh", "-c", "<cmd>"]; escape backslashes and double quotes for JSON.
  json_cmd="$(printf '%s' "$cmd" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
  log "building $ref with $BUILDER"
  if ! "$BUILDER" import \
    --change "CMD [\"sh\", \"-c\", \"$json_cmd\"]" \
    --change "LABEL openpods.test-image-version=$VERSION" \
    --change "WORKDIR /" \
    --message "openpods test image $name" \
    "$WORK/rootfs.tar" "$ref" >/dev/null 2>"$WORK/import.log"; then
    cat "$WORK/import.log" >&2
    exit 1
  fi
done
log "done: ${#todo[@]} image(s) built"
