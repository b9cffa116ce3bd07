#!/usr/bin/env bash
# Usage: check-mermaid.sh FILE.mmd [FILE.mmd ...]
#
# Renders each Mermaid diagram to SVG with the official mermaid CLI (mmdc)
# in Debian's headless chromium (puppeteer.json), and exits non-zero with
# mermaid's own error message if any diagram fails to parse or render.
# Prints "rendered N Mermaid diagram(s)" on success.
#
# Several files are rendered in ONE mmdc run (one chromium start): they are
# put as ```mermaid blocks into a Markdown file, which mmdc renders chart by
# chart, in order, stopping at the first failure. The first chart with no
# SVG is the one that failed.
#
# A run that takes longer than CHECK_MERMAID_TIMEOUT seconds (default 120)
# is stopped and fails, so a hung browser cannot hang the test suite.
#
# Needs `npm ci --prefix tests/explain` and /usr/bin/chromium.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mmdc="$here/node_modules/.bin/mmdc"

if [ $# -eq 0 ]; then
  echo "usage: $0 FILE.mmd [FILE.mmd ...]" >&2
  exit 2
fi
if [ ! -x "$mmdc" ]; then
  echo "mermaid-cli is not installed in $here: run npm ci --prefix tests/explain" >&2
  exit 2
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "/usr/bin/chromium not found: apt-get install -y chromium" >&2
  exit 2
fi
for f in "$@"; do
  [ -f "$f" ] || { echo "$f: no such file" >&2; exit 2; }
done

timeout="${CHECK_MERMAID_TIMEOUT:-120}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# mmdc with a deadline; on SIGTERM puppeteer closes the browser it started.
run_mmdc() {
  local rc=0
  timeout --kill-after=10 "$timeout" "$mmdc" -q -p "$here/puppeteer.json" "$@" \
    >>"$work/log" 2>&1 || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "mmdc did not finish within ${timeout}s (CHECK_MERMAID_TIMEOUT)" >>"$work/log"
  fi
  return "$rc"
}

# mmdc's errors end in a stack trace through puppeteer and the page; the
# message above it is mermaid's own, and is all a test failure needs.
mermaid_message() {
  grep -v -e '^[[:space:]]*at ' -e 'mermaid-cli-intercept\.invalid' "$1" |
    sed -e '/^[[:space:]]*$/d' >&2 || true
}

# An SVG must exist, be non-empty, be an SVG, and not be mermaid's error
# diagram (text "Syntax error in text", class "error-icon"), which some
# mermaid entry points draw instead of failing. mmdc 11.17 throws instead
# (checked on parse errors, unknown diagram types, empty input and bad
# activations), but a diagram that draws the error picture must never pass.
# The match is narrow so that a message such as "400 syntax error" passes.
check_svg() {
  local svg="$1" src="$2"
  if [ ! -s "$svg" ]; then
    echo "$src: mmdc wrote no SVG" >&2
    return 1
  fi
  if ! grep -q '<svg' "$svg"; then
    echo "$src: mmdc output is not an SVG" >&2
    return 1
  fi
  if grep -q -e 'Syntax error in text' -e 'class="error-icon"' "$svg"; then
    echo "$src: mermaid drew its \"Syntax error\" diagram" >&2
    return 1
  fi
}

if [ $# -eq 1 ]; then
  if ! run_mmdc -i "$1" -o "$work/out.svg"; then
    echo "$1: mermaid failed to render:" >&2
    mermaid_message "$work/log"
    exit 1
  fi
  check_svg "$work/out.svg" "$1"
else
  for f in "$@"; do
    printf '```mermaid\n%s\n```\n\n' "$(cat "$f")"
  done >"$work/all.md"
  status=0
  run_mmdc -i "$work/all.md" -o "$work/all-out.md" || status=$?
  n=0
  for f in "$@"; do
    n=$((n + 1))
    svg="$work/all-out-$n.svg"
    if [ ! -e "$svg" ] && [ "$status" -ne 0 ]; then
      echo "$f: mermaid failed to render:" >&2
      mermaid_message "$work/log"
      exit 1
    fi
    check_svg "$svg" "$f"
  done
  if [ "$status" -ne 0 ]; then
    echo "mmdc failed after rendering every diagram:" >&2
    mermaid_message "$work/log"
    exit 1
  fi
fi

echo "rendered $# Mermaid diagram(s)"
