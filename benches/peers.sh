#!/usr/bin/env bash
# Every benchmark table in one command, with wsbridge, nginx and LiteLLM side by side on the
# REST pass-through path in front of one simulator (the `passthrough` scenario of
# benches/e2e.rs; the other scenarios run as `cargo bench --bench e2e` runs them). Installs nginx
# (apt) and LiteLLM (pip, pinned, into .venv-peers) when they are missing. Not run in CI: it
# needs root for apt and about two minutes to install LiteLLM.
#
#   benches/peers.sh                    # every table, full counts
#   benches/peers.sh passthrough        # only the side-by-side table
#   benches/peers.sh --quick            # small counts
set -euo pipefail
cd "$(dirname "$0")/.."

LITELLM_VERSION=1.108.7   # never 1.107.0 (a compromised release)
SIM_PORT=9100 NGINX_PORT=9200 LITELLM_PORT=9300
KEY=sk-bench

if ! command -v nginx >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nginx >/dev/null
fi
if [ ! -x .venv-peers/bin/litellm ]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
fi
cargo build --release --quiet

WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

target/release/wsbridge simulate --listen "127.0.0.1:$SIM_PORT" 2>"$WORK/sim.log" &
pids+=($!)

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  upstream simulator { server 127.0.0.1:$SIM_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://simulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
NGINX
nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
pids+=($!)

cat >"$WORK/litellm.yaml" <<YAML
model_list:
  - model_name: gpt-bench
    litellm_params:
      model: openai/gpt-bench
      api_base: http://127.0.0.1:$SIM_PORT/v1
      api_key: $KEY
general_settings:
  master_key: $KEY
YAML
LITELLM_LOCAL_MODEL_COST_MAP=True .venv-peers/bin/litellm --config "$WORK/litellm.yaml" \
  --host 127.0.0.1 --port "$LITELLM_PORT" >"$WORK/litellm.log" 2>&1 &
pids+=($!)

wait_port "$SIM_PORT"
wait_port "$NGINX_PORT"
wait_port "$LITELLM_PORT"

# No scenario named: all of them (every table); the peers join the passthrough table.
cargo bench --bench e2e -- "$@" \
  --upstream "http://127.0.0.1:$SIM_PORT/v1" \
  --peer "nginx 1.22 (proxy_buffering off)=http://127.0.0.1:$NGINX_PORT/v1" \
  --peer "LiteLLM $LITELLM_VERSION=http://127.0.0.1:$LITELLM_PORT/v1"
