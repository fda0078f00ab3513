#!/bin/sh
# Writes the password file redis.conf includes, then runs Redis as the redis
# user on the data volume, listening on the container's network (the
# password guards it).
set -eu
if [ -z "${REDIS_PASSWORD:-}" ]; then
  echo "REDIS_PASSWORD is not set: refusing to start Redis without a password" >&2
  exit 2
fi
umask 077
printf 'requirepass %s\n' "$REDIS_PASSWORD" > /etc/redis/flit-cache-secret.conf
chown redis:redis /etc/redis/flit-cache-secret.conf
# Platform volumes are often mounted root-owned.
chown -R redis:redis /data
# REDIS_MAXMEMORY: when the container is not the 2 GB redis.conf assumes
# (about half of the RAM, see the comment there).
if [ -n "${REDIS_MAXMEMORY:-}" ]; then
  exec gosu redis redis-server /etc/redis/redis.conf --bind '*' '-::*' --dir /data \
    --maxmemory "$REDIS_MAXMEMORY"
fi
exec gosu redis redis-server /etc/redis/redis.conf --bind '*' '-::*' --dir /data
