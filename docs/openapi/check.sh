#!/usr/bin/env bash
# Checks the running proxy against its OpenAPI documents with schemathesis: the shipped proxy.toml,
# moved to free ports, plus one plain CSML credential (a signed one is only valid for minutes), is
# started with its demo bots; each dialect's document is read from the admin listener and every
# operation gets up to EXAMPLES generated requests (valid and invalid), each answer checked against
# the document (status, content type, headers, schema) and for server errors.
#
# Usage: docs/openapi/check.sh [BINARY [EXAMPLES [SECONDS]]]
#   BINARY    the proxy (default target/debug/botbridge)
#   EXAMPLES  generated requests per operation and phase (default 50)
#   SECONDS   the most one dialect's run may take, else it fails (default 300)
# SCHEMATHESIS_SEED picks the examples (default 1, so CI runs are repeatable; try others to explore).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
binary=${1:-$root/target/debug/botbridge}
examples=${2:-50}
seconds=${3:-300}
seed=${SCHEMATHESIS_SEED:-1}

# schemathesis, pinned, in its own virtualenv (installed once).
version=4.32.5
venv=${SCHEMATHESIS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/botbridge-schemathesis-$version}
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

work=$(mktemp -d)
proxy_pid=""
cleanup() {
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port); admin=$(free_port); demo=$(free_port)
sed -e "s/127.0.0.1:8080/127.0.0.1:$port/; s/127.0.0.1:9090/127.0.0.1:$admin/; s/127.0.0.1:8081/127.0.0.1:$demo/g" \
    -e "s|^\[server\]|[server]\npid_file = \"$work/pid\"\nupgrade_sock = \"$work/sock\"|" \
    "$root/proxy.toml" >"$work/proxy.toml"
cat >>"$work/proxy.toml" <<'EOF'

# For the schemathesis run only: a plain CSML credential, valid for as long as the run takes.
[[clients.csml]]
name = "schemathesis"
key = "schemathesis-plain-key"
auth = "plain"
callback_hosts = ["127.0.0.1", "localhost"]   # as the demo credential: async requests are valid too
callback_secret = "schemathesis-callback-secret"
allow_http_callbacks = true
allow_private_callbacks = true
EOF

RUST_LOG=warn "$binary" --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
proxy_pid=$!
if ! python3 - "$admin" <<'EOF'
import sys, time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the proxy did not start")
EOF
then
  tail -n 20 "$work/proxy.log"
  exit 1
fi

# One worker: with two, CPython 3.11's parser (hypothesis describes its filters by parsing their
# source) fails now and then with "AST constructor recursion depth mismatch", a thread-safety bug.
# Credentials go by the documents' security scheme names, so schemathesis knows them for what they
# are (its ignored_auth check sends requests without them, or with others, and expects a 401).
auth() {
  case $1 in
    haptik) printf '[auth.openapi.bearer]\nbearer = "demo-token"\n[auth.openapi.clientId]\napi_key = "demo-client"\n' ;;
    csml) printf '[auth.openapi.apiKey]\napi_key = "schemathesis-plain-key"\n' ;;
    rasa) printf '[auth.openapi.token]\napi_key = "demo-rasa-token"\n[auth.openapi.bearer]\nbearer = "demo-rasa-token"\n' ;;
    dialogflow-cx) printf '[auth.openapi.bearer]\nbearer = "demo-dialogflow-token"\n' ;;
    directline) printf '[auth.openapi.bearer]\nbearer = "demo-directline-secret"\n' ;;
  esac
}
status=0
# lex-v2 is left out: schemathesis cannot sign AWS SigV4 requests (tests/lex.rs and the documented
# example in tests/openapi.rs cover its document).
for dialect in ${CHECK_DIALECTS:-haptik csml rasa dialogflow-cx directline}; do
  echo "schemathesis: $dialect"
  auth "$dialect" >"$work/$dialect.toml"
  timeout "$seconds" "$venv/bin/schemathesis" --config-file "$work/$dialect.toml" run \
    "http://127.0.0.1:$admin/openapi/$dialect.json" --url "http://127.0.0.1:$port" \
    --checks all --max-examples "$examples" --seed "$seed" --workers 1 \
    --request-timeout 10 --generation-database none --warnings off --no-color || status=1
done
if [ $status -ne 0 ]; then
  echo "schemathesis: failures above; the proxy's log:"
  tail -n 40 "$work/proxy.log"
fi
exit $status
