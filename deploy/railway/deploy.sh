#!/usr/bin/env bash
# Provisions flit-cache on Railway with the Railway CLI, and can be run again
# at any time: what exists is kept (the Redis password, volumes, variables
# you set), what is missing is created, and the code is deployed again.
#
#   deploy/railway/deploy.sh            # long-running `flit-cache run` (recommended)
#   deploy/railway/deploy.sh cron       # adds a cron service: `batch-upload` at 02:00 UTC
#
# Needs: the Railway CLI (https://docs.railway.com/guides/cli) and a login
# (`railway login`, or RAILWAY_API_TOKEN for CI). Optional environment:
#   FLIT_RAILWAY_PROJECT   project name when one is created (default flit-cache)
#   BIGQUERY_PROJECT       set on the app services; FLIT_SINK=bigquery then
#   FLIT_SINK              local, to upload into the container (needs saying)
#   GOOGLE_APPLICATION_CREDENTIALS_JSON   the service-account key, set when given
set -euo pipefail

mode="${1:-service}"
case "$mode" in
  service|cron) ;;
  *) echo "usage: $0 [service|cron]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "$0")/../.." && pwd)"
project="${FLIT_RAILWAY_PROJECT:-flit-cache}"

die() { echo "deploy.sh: $*" >&2; exit 1; }

command -v railway >/dev/null 2>&1 ||
  die "the Railway CLI is not installed: see https://docs.railway.com/guides/cli (npm i -g @railway/cli, or brew install railway)"
railway whoami >/dev/null 2>&1 ||
  die "not logged in to Railway: run \`railway login\` (or set RAILWAY_API_TOKEN)"
command -v openssl >/dev/null 2>&1 || die "openssl is needed to create the Redis passwords"

# Where uploads go. A Railway container's own folder is lost at each
# redeploy, so local is only ever chosen explicitly.
if [ -n "${BIGQUERY_PROJECT:-}" ]; then
  sink="${FLIT_SINK:-bigquery}"
elif [ "${FLIT_SINK:-}" = local ]; then
  sink=local
  echo "deploy.sh: FLIT_SINK=local: rows go to files inside the container, lost at each redeploy unless FLIT_WAREHOUSE_DIR is on a volume" >&2
else
  die "set BIGQUERY_PROJECT (and GOOGLE_APPLICATION_CREDENTIALS_JSON) to upload to BigQuery, or FLIT_SINK=local to upload into the container's own folder"
fi

cd "$root"
if ! railway status --json >/dev/null 2>&1; then
  echo "==> creating Railway project $project"
  railway init --name "$project"
fi

has_service() {
  railway service list --json 2>/dev/null | grep -Eq "\"name\": *\"$1\""
}

# Redis, configured by deploy/redis/redis.conf, on a volume, with one user
# per role (deploy/redis/users.acl). Each password is made once, when it is
# missing (an upgrade from the single REDIS_PASSWORD gets them too); running
# this again keeps them.
if ! has_service redis; then
  echo "==> adding the redis service"
  railway add --service redis
  railway volume add --service redis --mount-path /data
fi
# Only the names are looked at; the listing also holds values, so it is
# never printed.
# A listing that fails must not read as "no passwords yet": making new ones
# would lock out every running client.
redis_variables="$(railway variable list --service redis --json 2>/dev/null)" ||
  die "cannot list the redis service's variables (railway variable list --service redis); no password was changed"
for role in SERVICE PRODUCER READER MONITOR ADMIN; do
  name="REDIS_${role}_PASSWORD"
  if ! printf '%s' "$redis_variables" | grep -Eq "\"$name\" *:"; then
    echo "==> generating $name (stored as a Railway variable of the redis service)"
    # Through stdin: a command line is visible to every local user.
    openssl rand -hex 32 |
      railway variable set --service redis --skip-deploys "$name" --stdin >/dev/null
  fi
done
unset redis_variables
echo "==> deploying redis from deploy/redis"
railway up deploy/redis --path-as-root --service redis --detach

# What both app services need: the flit-service user.
# ${{redis.REDIS_SERVICE_PASSWORD}} is a Railway reference: the value stays
# in Railway, never in this script or its output.
app_variables() {
  local service="$1"
  # shellcheck disable=SC2016 # ${{...}} is Railway's syntax, not the shell's
  railway variable set --service "$service" --skip-deploys \
    'REDIS_URL=redis://flit-service:${{redis.REDIS_SERVICE_PASSWORD}}@redis.railway.internal:6379' \
    'FLIT_HTTP_ADDR=[::]:9464' 'PORT=9464' >/dev/null
  railway variable set --service "$service" --skip-deploys "FLIT_SINK=$sink" >/dev/null
  if [ -n "${BIGQUERY_PROJECT:-}" ]; then
    railway variable set --service "$service" --skip-deploys "BIGQUERY_PROJECT=$BIGQUERY_PROJECT" >/dev/null
  fi
  if [ -n "${GOOGLE_APPLICATION_CREDENTIALS_JSON:-}" ]; then
    printf '%s' "$GOOGLE_APPLICATION_CREDENTIALS_JSON" |
      railway variable set --service "$service" --skip-deploys GOOGLE_APPLICATION_CREDENTIALS_JSON --stdin >/dev/null
  fi
}

# The long-running service: ingest, and the 02:00 UTC upload unless cron
# mode moves it out.
if ! has_service flit-cache; then
  echo "==> adding the flit-cache service"
  railway add --service flit-cache
fi
app_variables flit-cache
echo "==> deploying flit-cache (railway.toml: flit-cache run, health check /readyz)"
railway up . --service flit-cache --detach

if [ "$mode" = cron ]; then
  if ! has_service flit-cache-upload; then
    echo "==> adding the flit-cache-upload cron service"
    railway add --service flit-cache-upload
  fi
  app_variables flit-cache-upload
  # The run service must not upload too: move its schedule to a date that never comes.
  railway variable set --service flit-cache --skip-deploys 'FLIT_UPLOAD_CRON=0 0 0 31 2 *' >/dev/null
  # Railway reads railway.toml at the root of what is uploaded: upload a copy
  # of the repository with the cron configuration in its place.
  staging="$(mktemp -d)"
  trap 'rm -rf "$staging"' EXIT
  git -C "$root" ls-files -z | (cd "$root" && xargs -0 cp --parents -t "$staging")
  cp deploy/railway/cron.railway.toml "$staging/railway.toml"
  echo "==> deploying flit-cache-upload (cron 0 2 * * *: flit-cache batch-upload)"
  railway up "$staging" --path-as-root --service flit-cache-upload --detach
  railway redeploy --service flit-cache --yes >/dev/null 2>&1 || true
fi

cat <<'DONE'
==> done. A deploy goes live once /readyz answers (Redis reachable). Next:
  railway logs --service flit-cache     # "stream worker started" for both kinds
Producers (the ML API) in this project send as flit-producer and look up as
flit-reader at redis.railway.internal:6379, with the redis service's
REDIS_PRODUCER_PASSWORD and REDIS_READER_PASSWORD as Railway references
(redis://flit-producer:${{redis.REDIS_PRODUCER_PASSWORD}}@redis.railway.internal:6379);
see README "Redis users".
DONE
