#!/usr/bin/env bash
# Runs flit-cache on this machine with its built-in defaults:
# installs redis-server when absent, starts a private Redis (AOF on) whose data
# lives in ./.flit/redis, builds the binary and runs `flit-cache run` in the
# foreground. Uploads go to the local warehouse folder ./warehouse.
# Stop with Ctrl-C; the private Redis keeps running (stop it with
# `redis-cli -p 6379 shutdown`), so nothing waiting for upload is lost.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
port="${FLIT_REDIS_PORT:-6379}"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server from the OS packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi

ours() { [ -f .flit/redis/redis.pid ] && redis-cli -p "$port" info server 2>/dev/null | tr -d '\r' | grep -qx "process_id:$(cat .flit/redis/redis.pid)"; }
if ours; then
  echo "==> the private Redis from an earlier start answers on port $port; using it"
elif redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "error: another Redis already listens on port $port. Start a private one on another port:" >&2
  echo "  FLIT_REDIS_PORT=6380 bash scripts/quickstart.sh   (and export REDIS_URL=redis://127.0.0.1:6380 in other terminals)" >&2
  exit 1
else
  mkdir -p .flit/redis
  echo "==> starting a private Redis on port $port (data in .flit/redis)"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$PWD/.flit/redis" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
    --daemonize yes --pidfile "$PWD/.flit/redis/redis.pid" --logfile "$PWD/.flit/redis/redis.log"
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "==> building flit-cache"
cargo build --release --locked --quiet
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$port}"
echo "==> flit-cache run (push events from another terminal: target/release/flit-cache generate --count 10000)"
exec target/release/flit-cache run
