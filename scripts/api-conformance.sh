#!/usr/bin/env bash
# API conformance: starts a development deployment on free ports, the two
# trust domains apart (`asclepios init --records-dir`, then `serve authority`
# and `serve records`, each on its own SQLite file), and runs schemathesis against both
# services' /openapi.json, over mutual TLS with signed requests, as several
# identities (scripts/api_conformance/test_api.py). Fails on any 5xx, any
# undeclared status or content type, any body that breaks its schema.
#
#   scripts/api-conformance.sh [EXAMPLES]     examples per operation and identity (default 100)
#
# Needs Python 3 with schemathesis and cryptography (installed from PyPI when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
examples="${1:-100}"
bin="${ASCLEPIOS_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --quiet --locked -p asclepios-cli --manifest-path "$root/Cargo.toml"
  bin="$root/target/debug/asclepios"
fi
if ! python3 -c 'import schemathesis, cryptography, pytest' 2>/dev/null; then
  echo "installing schemathesis from PyPI" >&2
  python3 -m pip install --quiet schemathesis cryptography pytest
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
authority_port="$(free_port)"
records_port="$(free_port)"
"$bin" init --dir "$work/d" --records-dir "$work/r" >/dev/null
for config in "$work/d/asclepios.toml" "$work/r/asclepios.toml"; do
  sed -i "s/127.0.0.1:7443/127.0.0.1:$authority_port/; s/127.0.0.1:7444/127.0.0.1:$records_port/" "$config"
done

# Starts `asclepios serve <domain>` and waits until it listens on <port>.
serve() {
  local domain="$1" dir="$2" port="$3"
  "$bin" serve "$domain" --dir "$dir" >"$work/$domain.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/$domain.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "asclepios serve $domain did not listen on $port" >&2
  exit 1
}
# The authority first: the record service fetches its directory facts at
# start, and serves once it holds them.
serve authority "$work/d" "$authority_port"
serve records "$work/r" "$records_port"
sleep 1

ASCLEPIOS_DIR="$work/d" \
ASCLEPIOS_AUTHORITY="https://localhost:$authority_port" \
ASCLEPIOS_RECORDS="https://localhost:$records_port" \
ASCLEPIOS_AS="${ASCLEPIOS_AS:-dr-heart,pat-00000,auditor-ann,lab-central}" \
ASCLEPIOS_EXAMPLES="$examples" \
  python3 -m pytest -q -p no:cacheprovider "$root/scripts/api_conformance/test_api.py" "${@:2}"
