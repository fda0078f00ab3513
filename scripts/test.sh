#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (redis-server from the OS packages), checks formatting and lints, then runs
# unit and integration tests. Each integration test starts its own
# redis-server on a free port with its own data folder.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server from the OS packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --lib --bins --tests
