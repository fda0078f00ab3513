#!/usr/bin/env bash
# The chaos soak, for as long as you like (the test command runs it for
# 40 s): flit-cache run, batch-upload processes, Redis and the BigQuery
# emulator are killed at random while a producer pushes events; then every
# event is counted in the emulator. Three runs:
#   1. the soak itself, SOAK_SECONDS long (default 300);
#   2. a short record TTL (60 s) with BigQuery away for longer than that:
#      each event is in the warehouse or dead-lettered as expired, never
#      both, never neither;
#   3. a host crash: each Redis kill also cuts its AOF back by its last
#      second, which is what `appendfsync everysec` can lose.
# SOAK_SEED fixes the random choices. Output: the counts, per run.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/test-tools.sh
source scripts/test-tools.sh

seconds="${SOAK_SECONDS:-300}"
cargo build --locked --tests --quiet
echo "==> chaos soak, ${seconds} s"
SOAK_SECONDS="$seconds" cargo test --locked --test soak chaos_soak -- --exact --nocapture 2>&1 | grep -E '^soak|panicked|problems|test result'
echo "==> chaos soak with a 60 s record TTL"
SOAK_SECONDS="$seconds" cargo test --locked --test soak chaos_soak_short_ttl -- --ignored --nocapture 2>&1 | grep -E '^soak|panicked|problems|test result'
echo "==> chaos soak with host crashes (the AOF loses its last second)"
SOAK_SECONDS="$seconds" cargo test --locked --test soak chaos_soak_host_crash -- --ignored --nocapture 2>&1 | grep -E '^soak|panicked|problems|test result'
