#!/usr/bin/env bash
# The end of the test command's summary: how many tests ran and which of
# them skipped for a missing prerequisite, and why.
#
#   bash scripts/skip-summary.sh SKIP_LOG [NEXTEST_OUTPUT]
#
# SKIP_LOG holds one line per skipped test, "TEST: needs WHAT", written by
# `cc_e2e::require` (testkit/src/lib.rs) when CC_SKIP_LOG names it. A skipped
# test reports "passed" to nextest, so nextest's own count includes it:
# this names each one. NEXTEST_OUTPUT, when given, is nextest's output, for
# the number of tests run. Prints "counts: N tests run, K skipped" last;
# exits 0 (the caller decides whether a skip fails the run).
set -euo pipefail
skip_log="$1"
run_log="${2:-}"
skipped=0
if [ -s "$skip_log" ]; then
    skipped=$(wc -l < "$skip_log")
    sort "$skip_log"
    echo "$skipped tests skipped; the reasons (count, reason):"
    # Lines are "TEST: needs WHAT"; test names hold no space.
    sed -E 's/^[^ ]*: //' "$skip_log" | sort | uniq -c | sort -rn
else
    echo "none"
fi
run="?"
if [ -n "$run_log" ] && [ -s "$run_log" ]; then
    run=$(sed -nE 's/.*Summary \[[^]]*\] +([0-9]+) tests? run.*/\1/p' "$run_log" | tail -n 1)
    run="${run:-?}"
fi
echo "counts: $run tests run, $skipped skipped for a missing prerequisite"
