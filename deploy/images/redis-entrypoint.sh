#!/bin/sh
# As the official image does: other containers reach Redis, so protected mode (loopback only
# without a password) is off, and it listens on every interface of its container.
if [ "$1" = "redis-server" ]; then
  shift
  exec redis-server --bind "* -::*" --protected-mode no "$@"
fi
exec "$@"
