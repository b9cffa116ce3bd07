#!/usr/bin/env bash
# Quick load figure: the upstream hit directly, through nginx as a plain
# proxy_pass (no auth), and through Portcullis (no-auth route, and a bearer
# route with one RS256 token reused), wrk on loopback.
#
#   benches/load/quick.sh [seconds-per-run]     (default 10)
#
# Needs wrk, nginx, openssl, python3 (installs wrk and nginx-light with apt
# when missing). Gateway: one worker pinned to core 0; wrk: core 1; nginx:
# one worker (serves the upstream answer and the JWKS). Every process it
# starts is stopped by PID on exit. Talks only to 127.0.0.1.
set -euo pipefail
secs=${1:-10}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
chmod 755 "$work"   # nginx workers run as another user
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx-light
need openssl openssl

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port); gw_port=$(free_port); px_port=$(free_port)

# A signing key, its JWKS and one token, with openssl and the Python stdlib.
openssl genrsa -out "$work/key.pem" 2048 2>/dev/null
modulus=$(openssl rsa -in "$work/key.pem" -noout -modulus | cut -d= -f2)
b64url() { python3 -c 'import base64,sys; print(base64.urlsafe_b64encode(sys.stdin.buffer.read()).rstrip(b"=").decode())'; }
n=$(printf '%s' "$modulus" | xxd -r -p | b64url)
printf '{"keys":[{"kty":"RSA","kid":"bench","alg":"RS256","use":"sig","n":"%s","e":"AQAB"}]}' "$n" >"$work/jwks.json"
issuer="http://127.0.0.1:$up_port"
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
payload=$(printf '{"iss":"%s","aud":"bench-api","sub":"bench","scope":"read","exp":%d}' "$issuer" $(( $(date +%s) + 3600 )) | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$work/key.pem" | b64url)
token="$header.$payload.$signature"

mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$up_port;
    location = /jwks.json { default_type application/json; alias $work/jwks.json; }
    location / { default_type text/plain; return 200 "hello from upstream\n"; }
  }
}
CONF
taskset -c 1 nginx -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_for() { for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }
wait_for "http://127.0.0.1:$up_port/jwks.json"

# nginx as a plain reverse proxy, one worker on the gateway's core: the
# figure a proxy that does no auth reaches in this harness.
mkdir -p "$work/proxy"
cat >"$work/proxy.conf" <<CONF
worker_processes 1;
pid $work/proxy.pid;
error_log $work/proxy/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/proxy; proxy_temp_path $work/proxy; fastcgi_temp_path $work/proxy;
  uwsgi_temp_path $work/proxy; scgi_temp_path $work/proxy;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$up_port; keepalive 64; }
  server {
    listen 127.0.0.1:$px_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
taskset -c 0 nginx -c "$work/proxy.conf" -g 'daemon off;' &
pids+=($!)
wait_for "http://127.0.0.1:$px_port/public/x"

cat >"$work/gateway.yaml" <<CONF
listen: 127.0.0.1:$gw_port
providers:
  - name: bench
    issuer: $issuer
    jwks_uri: $issuer/jwks.json
    audiences: [bench-api]
    algorithms: [RS256]
upstreams:
  app: { url: "http://127.0.0.1:$up_port" }
routes:
  - { path: /public/**, upstream: app, auth: none }
  - { path: /api/**, upstream: app, scopes: [read] }
CONF
if [ ! -x "$root/target/release/portcullis" ]; then (cd "$root" && cargo build --release -q); fi
RUST_LOG=${RUST_LOG:-warn} taskset -c 0 "$root/target/release/portcullis" run --config "$work/gateway.yaml" --workers 1 &
pids+=($!)
wait_for "http://127.0.0.1:$gw_port/public/x"
# Sanity: a bad token is refused before anything is measured.
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${token}x" "http://127.0.0.1:$gw_port/api/x")
[ "$code" = 401 ] || { echo "gateway did not refuse a bad token (got $code)"; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$gw_port/api/x")
[ "$code" = 200 ] || { echo "gateway refused the good token (got $code)"; exit 1; }

run() { # name url [header]; sets $rps
  local out p50 p99 errors
  if [ $# -eq 3 ]; then out=$(taskset -c 1 wrk -t1 -c50 -d"${secs}s" --latency -H "$3" "$2")
  else out=$(taskset -c 1 wrk -t1 -c50 -d"${secs}s" --latency "$2"); fi
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx/ {print $5}' <<<"$out")
  printf '%-34s %12s %10s %10s %s\n' "$1" "$rps" "$p50" "$p99" "${errors:+non-2xx: $errors}"
}
echo "$(date -u +%FT%TZ) $(nproc) cores, ${secs}s per run, 50 connections, wrk -t1"
printf '%-34s %12s %10s %10s\n' scenario req/s p50 p99
run "upstream direct (nginx)" "http://127.0.0.1:$up_port/public/x"; direct=$rps
run "nginx proxy_pass, no auth" "http://127.0.0.1:$px_port/public/x"; proxy=$rps
run "portcullis, no-auth route" "http://127.0.0.1:$gw_port/public/x"; open=$rps
run "portcullis, RS256 token reused" "http://127.0.0.1:$gw_port/api/x" "Authorization: Bearer $token"; auth=$rps
python3 -c "print(f'ratios to upstream direct: nginx proxy {$proxy/$direct:.2f}, portcullis no-auth {$open/$direct:.2f}, RS256 {$auth/$direct:.2f}; portcullis no-auth / nginx proxy {$open/$proxy:.2f}')"
