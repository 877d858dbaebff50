#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, then merges
# what the run found into the kept corpus (fuzz/corpus/<target>) and copies
# any crash into fuzz/regressions/<target>, which the default test run
# replays (crates/fuzz-targets/tests/replay.rs).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 600 seconds, all targets
#   FUZZ_JOBS=2 scripts/fuzz.sh 600           two targets at a time
#
# Prints one line per target: executions, executions per second, coverage
# and findings; exits 1 if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-600}"
shift || true
jobs="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (once)" >&2
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain take them.
export RUSTC_BOOTSTRAP=1

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

echo "building ${#targets[@]} target(s)" >&2
cargo fuzz build -O >&2

mkdir -p logs
run_one() {
  local t="$1" seconds="$2"
  mkdir -p "corpus/$t" "corpus-work/$t" "regressions/$t"
  local log="logs/$t.log"
  local status=0
  cargo fuzz run -O "$t" "corpus-work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=30 -rss_limit_mb=4096 \
    >"$log" 2>&1 || status=$?
  local execs rate cov
  execs=$(grep 'stat::number_of_executed_units:' "$log" | awk '{print $2}' | tail -n1)
  rate=$(grep 'stat::average_exec_per_sec:' "$log" | awk '{print $2}' | tail -n1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | awk '{print $2}' | tail -n1)
  local findings="none"
  if [ "$status" -ne 0 ]; then
    findings="CRASH (see fuzz/$log)"
    for f in artifacts/"$t"/*; do
      [ -f "$f" ] && cp "$f" "regressions/$t/"
    done
  fi
  # Keep only inputs that add coverage to the kept corpus.
  cargo fuzz run -O "$t" "corpus/$t" "corpus-work/$t" -- -merge=1 >"logs/$t.merge.log" 2>&1 || true
  printf '%-18s executions %-10s per_s %-7s cov %-6s corpus %-5s findings %s\n' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$(ls "corpus/$t" | wc -l)" "$findings"
  [ "$status" -eq 0 ]
}
export -f run_one

failed=0
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$seconds" || failed=1
exit "$failed"
