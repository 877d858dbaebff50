#!/usr/bin/env bash
# Crash safety: `asclepios serve` on SQLite and on PostgreSQL, killed with
# SIGKILL at random moments under concurrent writers and restarted, KILLS
# times per backend (default 20); then every acknowledged write must open,
# the audit log must extend every checkpoint signed before a kill, and no key
# wrapper or index entry may be orphaned. The test is
# crates/cli/tests/crash.rs; the default test run does 3 kills per backend.
#
#   scripts/crash.sh [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-20}"

if [ -z "${ASCLEPIOS_TEST_POSTGRES_URL:-}" ] && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "PostgreSQL does not answer on 127.0.0.1:5432; starting it" >&2
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

start=$(date +%s)
ASCLEPIOS_CRASH_KILLS="$kills" cargo test --locked -p asclepios-cli --test crash -- \
  --nocapture --test-threads 1 2>&1 | grep -E '^(SQLite|PostgreSQL|store checked|test |test result)|panicked|lost|consistent'
echo "crash run: ${kills} kills per backend in $(( $(date +%s) - start )) s"
