#!/usr/bin/env bash
# Build the test image localhost/openpods-test/postgres:15 with Podman from this machine's own PostgreSQL 15
# (no registry access is needed): the server binaries and libraries, their shared libraries (from ldd), the
# timezone data, busybox for a shell, setpriv to drop privileges, and a non-root `postgres` user (uid 999).
# The LLVM JIT library is left out (it is most of the size and only an optional optimisation).
#
# The container behaves like the official image for the parts OpenPods uses:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
#   POSTGRES_DB (default $POSTGRES_USER), PGDATA (default /var/lib/postgresql/data).
# On first start the entrypoint runs initdb as `postgres`, listens on '*':5432 and allows
#   host all all 0.0.0.0/0 scram-sha-256   (and ::/0)
# with plain `host` lines: TLS is terminated by Traefik in front of it.
#
# Usage: scripts/build-postgres-image.sh [--force]      (idempotent: skips an existing image unless --force)
# Env:   IMAGE (default localhost/openpods-test/postgres:15), PG_VERSION (15), CONTAINERS_CONF (optional).
set -euo pipefail

IMAGE="${IMAGE:-localhost/openpods-test/postgres:15}"
PG_VERSION="${PG_VERSION:-15}"
PG_UID=999
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

PGBIN="/usr/lib/postgresql/$PG_VERSION/bin"
PGLIB="/usr/lib/postgresql/$PG_VERSION/lib"
PGSHARE="/usr/share/postgresql/$PG_VERSION"

# Podman may still be being installed in the background (apt, logging to /tmp/apt.log, last line "done").
if [ -f /tmp/apt.log ] && ! command -v podman >/dev/null 2>&1; then
  echo "waiting for the background apt install to finish..." >&2
  for _ in $(seq 1 300); do
    [ "$(tail -n 1 /tmp/apt.log 2>/dev/null)" = "done" ] && break
    sleep 2
  done
fi
command -v podman >/dev/null 2>&1 || { echo "podman is not installed" >&2; exit 1; }
[ -x "$PGBIN/postgres" ] || { echo "PostgreSQL $PG_VERSION server binaries not found in $PGBIN" >&2; exit 1; }
BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] || { echo "busybox is not installed (apt-get install busybox-static)" >&2; exit 1; }
SETPRIV="$(command -v setpriv || true)"
[ -n "$SETPRIV" ] || { echo "setpriv (util-linux) is not installed" >&2; exit 1; }

WORK="$(mktemp -d /tmp/openpods-pgimage.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# crun fails on these machines, and Podman's default rlimits exceed root's hard limits: use runc and lower
# limits unless the caller already chose a containers.conf.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  export CONTAINERS_CONF="$WORK/containers.conf"
fi

if podman image exists "$IMAGE" && [ "$FORCE" = 0 ]; then
  echo "$IMAGE already exists (use --force to rebuild)"
  exit 0
fi

ROOT="$WORK/rootfs"
mkdir -p "$ROOT"/{bin,etc,tmp,usr/local/bin,usr/share/postgresql,usr/lib/postgresql/"$PG_VERSION"/lib}
mkdir -p "$ROOT"/var/lib/postgresql/data "$ROOT"/var/run/postgresql
chmod 1777 "$ROOT/tmp"

# PostgreSQL itself, without the LLVM JIT.
cp -a "$PGBIN" "$ROOT/usr/lib/postgresql/$PG_VERSION/"
( cd "$PGLIB" && find . -maxdepth 1 -name '*.so' ! -name 'llvmjit*' -exec cp -a {} "$ROOT$PGLIB/" \; )
cp -a "$PGSHARE" "$ROOT/usr/share/postgresql/"
cp -a /usr/share/zoneinfo "$ROOT/usr/share/"

# Shared libraries of every binary and module, copied to the same paths (dereferencing symlinks).
copy_libs() {
  # "libx.so => /path (0x..)" and the loader line "/lib64/ld-linux-x86-64.so.2 (0x..)" (portable awk)
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    [ -e "$ROOT$lib" ] || cp -L --parents "$lib" "$ROOT/"
  done
}
for f in "$ROOT/usr/lib/postgresql/$PG_VERSION/bin/"* "$ROOT$PGLIB/"*.so "$SETPRIV"; do
  copy_libs "$f"
done

cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in sh cat chmod chown echo env id ls mkdir mktemp printf rm sed sleep sync test tr [ cp mv grep; do
  ln -sf busybox "$ROOT/bin/$applet"
done
# Called by full path: the standalone busybox shell would otherwise run its own (limited) setpriv applet.
cp "$SETPRIV" "$ROOT/usr/local/bin/setpriv"

cat > "$ROOT/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/sh
postgres:x:$PG_UID:$PG_UID:PostgreSQL:/var/lib/postgresql:/bin/sh
EOF
cat > "$ROOT/etc/group" <<EOF
root:x:0:
postgres:x:$PG_UID:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$ROOT/etc/hosts"

cat > "$ROOT/usr/local/bin/docker-entrypoint.sh" <<'ENTRYPOINT'
#!/bin/sh
# First start: initdb as `postgres` from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, then run the server.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
if [ "${1#-}" != "$1" ]; then
  set -- postgres "$@"
fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec /usr/local/bin/setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user="${POSTGRES_USER:-postgres}"
  db="${POSTGRES_DB:-$user}"
  auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
  pwfile=""
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  elif [ "$auth" != trust ]; then
    echo "error: POSTGRES_PASSWORD is not set (set it, or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  initdb -D "$PGDATA" --username="$user" ${pwfile:+--pwfile="$pwfile"} \
    --auth-local=trust --auth-host="$auth" --encoding=UTF8 --locale=C >/dev/null
  [ -n "$pwfile" ] && rm -f "$pwfile"
  {
    echo "# OpenPods: TLS is terminated by the proxy, so plain host connections are accepted."
    echo "host all all 0.0.0.0/0 $auth"
    echo "host all all ::/0 $auth"
  } >> "$PGDATA/pg_hba.conf"
  {
    echo "listen_addresses = '*'"
    echo "port = 5432"
    echo "unix_socket_directories = '/var/run/postgresql'"
  } >> "$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    quoted="$(printf '%s' "$db" | sed 's/"/""/g')"
    printf 'CREATE DATABASE "%s";\n' "$quoted" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "PostgreSQL initialised in $PGDATA (user $user, database $db)"
fi

exec "$@"
ENTRYPOINT
chmod 755 "$ROOT/usr/local/bin/docker-entrypoint.sh"
chown -R "$PG_UID:$PG_UID" "$ROOT/var/lib/postgresql" "$ROOT/var/run/postgresql"
chmod 700 "$ROOT/var/lib/postgresql/data"

echo "importing $(du -sh "$ROOT" | cut -f1) root filesystem as $IMAGE"
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
tar -C "$ROOT" --numeric-owner -c . | podman import \
  --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
  --change 'CMD ["postgres"]' \
  --change "ENV PATH=/usr/lib/postgresql/$PG_VERSION/bin:/usr/local/bin:/bin" \
  --change 'ENV PGDATA=/var/lib/postgresql/data' \
  --change 'EXPOSE 5432/tcp' \
  --change 'STOPSIGNAL SIGINT' \
  --change 'LABEL org.opencontainers.image.title=openpods-test-postgres' \
  - "$IMAGE" >/dev/null
echo "built $IMAGE"
