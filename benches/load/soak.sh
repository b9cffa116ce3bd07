#!/usr/bin/env bash
# Soak (issue 6): the release binary under a mixed load on loopback for a
# bounded time, while the test IdP rotates its signing key every 20 s and
# the config is rewritten and SIGHUP'd every 15 s.
#
#   benches/load/soak.sh [seconds]      (default 600; SOAK_CONNS=64 connections)
#
# The load: valid, previous-key, retired-key, expired, bad-signature,
# wrong-scope, anonymous, unknown-kid and public requests, plus malformed
# ones (garbage Authorization, `..`, encoded slash), from many keep-alive
# connections. It fails on any 5xx, any answer its kind does not expect,
# any request forwarded that should have been refused (the upstream's
# record must equal the client's 200s exactly), a refused reload, or the
# gateway's RSS growing after warm-up; it prints a table per kind, the RSS
# series and a summary line. Everything it starts listens on 127.0.0.1 and
# is stopped when the test ends. The test is tests/soak.rs (#[ignore]d, so
# `cargo test` skips it).
set -euo pipefail
cd "$(dirname "$0")/../.."
export SOAK_SECS=${1:-600}
export SOAK_CONNS=${SOAK_CONNS:-64}
cargo test --release --locked --test soak --no-run
exec cargo test --release --locked --test soak -- --ignored --nocapture
