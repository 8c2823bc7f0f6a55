#!/usr/bin/env bash
# Regenerates RELIABILITY.md: runs the reliability suite (real listener,
# agents, helper and Debian's cron under faults, hostile input and load) and
# turns the rows it recorded into the document. As root, on a machine the
# test command (scripts/test.sh) has prepared once (packages, cc-agent-user).
#
#   bash scripts/reliability.sh            # writes RELIABILITY.md
#   OUT=path bash scripts/reliability.sh   # writes elsewhere
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-RELIABILITY.md}"
rows="$PWD/target/reliability"
rm -rf "$rows"
cargo build --workspace --bins --locked
started=$(date +%s)
CI=true CC_RELIABILITY_DIR="$rows" cargo nextest run -p cc-e2e --test reliability --locked --no-fail-fast
took=$(( $(date +%s) - started ))
target/debug/cc-reliability-table "$rows" > "$out.tmp"
printf '\nThis run: %s s for the whole suite, on %s (%s cores).\n' "$took" "$(uname -sr)" "$(nproc)" >> "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
