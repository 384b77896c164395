#!/usr/bin/env bash
# Base images for a machine that reaches Debian's and Python's package registries but no
# image registry: Debian from debootstrap, then Python, Redis and PostgreSQL from Debian's
# packages. Prints the variables docker-compose.yml reads to use them instead of the
# official images (python:3.11-slim, redis:7-alpine, postgres:16-alpine).
#   deploy/local-images.sh            make the images that are missing
#   deploy/local-images.sh --rebuild  make them all again
set -euo pipefail
cd "$(dirname "$0")"

PREFIX=${PNEUMOSCAN_LOCAL_PREFIX:-pneumoscan-local}
DEBIAN_IMAGE=$PREFIX/debian:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
REBUILD=${1:-}

missing() { [ "$REBUILD" = "--rebuild" ] || ! docker image inspect "$1" >/dev/null 2>&1; }

if missing "$DEBIAN_IMAGE"; then
  command -v debootstrap >/dev/null || { echo "install debootstrap first" >&2; exit 1; }
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  echo "debootstrap bookworm from $MIRROR" >&2
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$DEBIAN_IMAGE" >/dev/null
  echo "made $DEBIAN_IMAGE" >&2
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp images/* "$context"/
# pip in the builds trusts what pip here trusts (a site's own CA, if it has one).
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$context/host-ca.crt"

for role in python redis postgres; do
  image=$PREFIX/$role:local
  if missing "$image"; then
    docker build --network host --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE" \
      -f "$context/$role.Dockerfile" -t "$image" "$context" >&2
    echo "made $image" >&2
  fi
done

cat <<EXPORTS
export PNEUMOSCAN_PYTHON_IMAGE=$PREFIX/python:local
export PNEUMOSCAN_REDIS_IMAGE=$PREFIX/redis:local
export PNEUMOSCAN_POSTGRES_IMAGE=$PREFIX/postgres:local
EXPORTS
