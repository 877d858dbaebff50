#!/usr/bin/env bash
# API conformance: starts a development deployment (`asclepios init` and
# `serve`, SQLite) on free ports and runs schemathesis against both
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
serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
authority_port="$(free_port)"
records_port="$(free_port)"
"$bin" init --dir "$work/d" >/dev/null
sed -i "s/127.0.0.1:7443/127.0.0.1:$authority_port/; s/127.0.0.1:7444/127.0.0.1:$records_port/" "$work/d/asclepios.toml"
"$bin" serve --dir "$work/d" >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 1 300); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$authority_port") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$records_port") 2>/dev/null; then
    break
  fi
  kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
  sleep 0.1
done

ASCLEPIOS_DIR="$work/d" \
ASCLEPIOS_AUTHORITY="https://localhost:$authority_port" \
ASCLEPIOS_RECORDS="https://localhost:$records_port" \
ASCLEPIOS_AS="${ASCLEPIOS_AS:-dr-heart,pat-00000,auditor-ann,lab-central}" \
ASCLEPIOS_EXAMPLES="$examples" \
  python3 -m pytest -q -p no:cacheprovider "$root/scripts/api_conformance/test_api.py" "${@:2}"
