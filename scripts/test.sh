#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (redis-server and promtool from the OS packages, the BigQuery emulator
# and dbt into venvs), checks formatting and lints, the Prometheus alert
# rules with promtool, then runs
# unit and integration tests. Each integration test starts its own
# redis-server on a free port with its own data folder.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/test-tools.sh
source scripts/test-tools.sh

echo "==> hadolint, shellcheck"
"$lint_venv/bin/hadolint" Dockerfile deploy/redis/Dockerfile
"$lint_venv/bin/shellcheck" scripts/*.sh deploy/railway/deploy.sh deploy/redis/entrypoint.sh deploy/redis/render-acl.sh .ci/run

echo "==> promtool: the Prometheus alert rules and their tests"
"$PROMTOOL_BIN" check rules deploy/prometheus/flit-cache-alerts.yml
"$PROMTOOL_BIN" test rules deploy/prometheus/flit-cache-alerts.test.yml

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo doc (the public API, its examples compiled and run)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib
cargo test --locked --doc
echo "==> cargo test"
cargo test --locked --lib --bins --tests
# The systemd units as systemd reads them, where systemd-analyze is present
# (not as PID 1 here): their ExecStart pointed at the binary just built, the
# one thing verify checks that only an installed host has.
if command -v systemd-analyze >/dev/null 2>&1; then
  echo "==> systemd-analyze verify deploy/systemd"
  units="$(mktemp -d)"
  for unit in deploy/systemd/*; do
    sed "s|/usr/local/bin/flit-cache|$PWD/target/debug/flit-cache|g" "$unit" > "$units/${unit##*/}"
  done
  (cd "$units" && systemd-analyze verify --man=no ./*.service ./*.timer)
  rm -rf "$units"
else
  echo "==> systemd-analyze is not installed: the units are not verified here"
fi
echo "==> Python client: mypy, then its tests (clients/python)"
"$CLIENT_PYTHON" -m mypy --cache-dir /dev/null clients/python/flit_cache
FLIT_BIN="$PWD/target/debug/flit-cache" "$CLIENT_PYTHON" -m pytest -q -p no:cacheprovider clients/python/tests
