#!/bin/sh
# Renders the Redis users (deploy/redis/users.acl, passwords from
# REDIS_<ROLE>_PASSWORD, only their hashes written) into the ACL file
# redis.conf loads, then runs Redis as the redis user on the data volume,
# listening on the container's network (the users guard it).
set -eu
if [ -n "${REDIS_PASSWORD:-}" ] && [ -z "${REDIS_SERVICE_PASSWORD:-}" ]; then
  echo "REDIS_PASSWORD is no longer used: Redis has one user per role; set REDIS_SERVICE_PASSWORD, REDIS_PRODUCER_PASSWORD, REDIS_READER_PASSWORD and REDIS_MONITOR_PASSWORD (README, \"Redis users\")" >&2
  exit 2
fi
/usr/local/bin/flit-render-acl /etc/redis/users.acl.template /etc/redis/users.acl
chown redis:redis /etc/redis/users.acl
# Platform volumes are often mounted root-owned.
chown -R redis:redis /data
# REDIS_MAXMEMORY: when the container is not the 2 GB redis.conf assumes
# (about half of the RAM, see the comment there).
if [ -n "${REDIS_MAXMEMORY:-}" ]; then
  exec gosu redis redis-server /etc/redis/redis.conf --bind '*' '-::*' --dir /data \
    --maxmemory "$REDIS_MAXMEMORY"
fi
exec gosu redis redis-server /etc/redis/redis.conf --bind '*' '-::*' --dir /data
