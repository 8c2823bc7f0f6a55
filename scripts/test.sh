#!/usr/bin/env bash
# The test command: on a fresh Debian machine, as root, installs what the suite
# needs, then checks formatting and lints, builds, runs the whole suite and
# runs each fuzz target for a bounded time. `.ci/run` runs exactly this.
#
#   FUZZ_SECONDS=N   seconds per fuzz target (default 30; 0 skips the runs,
#                    the targets are still built)
#   CC_PARTIAL=1     a partial run: tests skipped for a missing prerequisite
#                    (outside CI only) are listed but do not fail the run.
#                    Without it, any skipped test makes the script exit 1
#                    after listing them: a skip is a claim left unchecked.
#
# There is no doc-test step: no crate has an example in its doc comments
# (`cargo test --doc` ran 0 tests), and nextest does not run doc tests.
# Add one back if a crate gains a doc example (docs/testing.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# Debian packages the suite uses: Debian's real cron daemon and crontab, and
# systemd-analyze for the units' exposure scores, and the SELinux tool chain
# that builds, links and queries the policy module; mmdebstrap,
# systemd-container (systemd-nspawn) and iproute2 for the systemd test bed
# (testkit/src/bed.rs), which boots the package under a real systemd.
PACKAGES=(cron systemd make postgresql selinux-policy-dev selinux-policy-default semodule-utils policycoreutils setools chromium chromium-driver mmdebstrap systemd-container iproute2)
# The unprivileged user the agent runs as in tests, as in production.
AGENT_USER=cc-agent-user
EXTRA_AGENT_USERS=(cc-agent-user2 cc-agent-user3)

if [ "$(id -u)" -eq 0 ]; then
    missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        step "installing Debian packages: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # The fleet schedules test runs three real agents, each with its own
    # crontab: cc-agent-user and these two, made the same way.
    for u in "$AGENT_USER" "${EXTRA_AGENT_USERS[@]}"; do
        if ! id "$u" >/dev/null 2>&1; then
            step "creating system user $u"
            useradd --system --user-group --home-dir /nonexistent --no-create-home \
                --shell /usr/sbin/nologin "$u"
        fi
    done
elif [ "${CI:-}" = "true" ]; then
    echo "the test command must run as root in CI (it installs packages and creates $AGENT_USER)" >&2
    exit 1
else
    echo "note: not root: no packages installed, no user created; tests that need them will skip (and fail the run unless CC_PARTIAL=1)" >&2
fi

command -v cargo-nextest >/dev/null || { step "installing cargo-nextest"; cargo install cargo-nextest --locked; }
command -v cargo-fuzz >/dev/null || { step "installing cargo-fuzz"; cargo install cargo-fuzz --locked; }
command -v cargo-deb >/dev/null || { step "installing cargo-deb"; cargo install cargo-deb --locked; }

# The suite's builds need several GB. Copies of earlier builds' binaries
# that tests made runnable by other users (testkit's `reachable`) are made
# again on demand: drop them, then say how much room is left, so a run
# that dies of a full disk says so first.
rm -rf "${TMPDIR:-/tmp}/cc-e2e-bins-$(id -u)"
free_kib=$(df -Pk . | awk 'NR == 2 {print $4}')
echo "free disk space where the suite builds: $((free_kib / 1024 / 1024)) GiB"
if [ "$free_kib" -lt $((12 * 1024 * 1024)) ]; then
    echo "warning: less than 12 GiB free here; the build and the suite may run out of room" >&2
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building the binaries the end-to-end suite starts"
cargo build --workspace --bins --locked

step "fuzz targets (cargo fuzz on stable with RUSTC_BOOTSTRAP=1)"
fuzz_seconds="${FUZZ_SECONDS:-30}"
fuzz_logs="$PWD/target/fuzz-logs"
mkdir -p "$fuzz_logs"
(
    cd fuzz
    export RUSTC_BOOTSTRAP=1
    cargo fuzz build -O
    if [ "$fuzz_seconds" -gt 0 ]; then
        for target in $(cargo fuzz list); do
            mkdir -p "corpus/$target"
            echo "fuzzing $target for ${fuzz_seconds}s"
            # The whole output goes to a log; only the summary lines are
            # shown. A run that fails (to start, or finds a crash) fails
            # the script.
            log="$fuzz_logs/$target.log"
            fuzz_status=0
            cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
                -max_total_time="$fuzz_seconds" -print_final_stats=1 >"$log" 2>&1 || fuzz_status=$?
            grep -E '^(Done|stat::number_of_executed_units)|ERROR|panicked' "$log" || true
            if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
                echo "fuzz target $target found a crash: see fuzz/artifacts/$target and $log" >&2
                exit 1
            fi
            if [ "$fuzz_status" -ne 0 ]; then
                echo "fuzz target $target: cargo fuzz run exited $fuzz_status: see $log" >&2
                exit 1
            fi
        done
    fi
)

step "the Debian package (release build, cargo deb)"

cargo build --release --bins --locked
rm -rf target/debian
cargo deb -p cc-agent --no-build

step "the whole suite"
# The reliability suite records a row per check here (testkit/src/reliability.rs).
rm -rf target/reliability
# Every test skipped for a missing prerequisite (only outside CI: with
# CI=true a missing one fails the test) is named in the summary below.
export CC_SKIP_LOG="$PWD/target/skipped.txt"
rm -f "$CC_SKIP_LOG"
suite=0
nextest_log="$PWD/target/nextest.log"
cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$nextest_log" || suite=$?
step "skipped tests"
bash scripts/skip-summary.sh "$CC_SKIP_LOG" "$nextest_log"
skipped=0
[ -s "$CC_SKIP_LOG" ] && skipped=$(wc -l < "$CC_SKIP_LOG")
[ "$suite" -eq 0 ] || exit "$suite"
if [ "$skipped" -gt 0 ] && [ "${CC_PARTIAL:-}" != "1" ]; then
    echo "$skipped tests skipped: the run is not complete (CC_PARTIAL=1 accepts a partial run)" >&2
    exit 1
fi

# RELIABILITY.md states the commit it was generated from
# (cc-reliability-table). It is current when that commit is at or after the
# last commit that changed the code it describes: the commit that adds the
# document only touches the document, so its parent — the stamp — is
# current. Refused: no stamp, a stamp from a dirty tree, a commit not in this
# history, or one older than the last change to these paths. Needs the
# whole history (not a shallow clone).
RELIABILITY_CODE=(cc-agent cc-listener cc-privhelper cc-exec proto tests/tests/reliability tests/src testkit)
reliability_is_current() {
    local doc="$1" stamp last
    if [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" != "false" ]; then
        echo "$doc: cannot check its commit: not a git checkout with its whole history" >&2
        return 1
    fi
    stamp=$(sed -nE 's/^Generated from commit ([0-9a-f]{40})[ .;].*/\1/p' "$doc" | head -n 1)
    if [ -z "$stamp" ]; then
        echo "$doc states no commit it was generated from: regenerate it with bash scripts/reliability.sh" >&2
        return 1
    fi
    if grep -q "^Generated from commit $stamp with uncommitted changes" "$doc"; then
        echo "$doc was generated from a dirty tree at $stamp: commit, then regenerate it" >&2
        return 1
    fi
    if ! git merge-base --is-ancestor "$stamp" HEAD 2>/dev/null; then
        echo "$doc was generated at $stamp, which is not in this branch's history: regenerate it" >&2
        return 1
    fi
    last=$(git log -1 --format=%H -- "${RELIABILITY_CODE[@]}")
    if ! git merge-base --is-ancestor "$last" "$stamp"; then
        echo "$doc was generated at $stamp, before $(git log -1 --format='%h "%s"' "$last") changed the code it describes: regenerate it with bash scripts/reliability.sh" >&2
        return 1
    fi
    echo "$doc: generated at $(git log -1 --format=%h "$stamp"), at or after the last change to the code it describes ($(git log -1 --format=%h "$last"))"
}

if [ "$(id -u)" -eq 0 ]; then
    step "RELIABILITY.md from this run's rows"
    # Fails if a row failed or a scenario left no rows.
    target/debug/cc-reliability-table target/reliability > target/RELIABILITY.md
    grep -E '^[0-9]+ checks' target/RELIABILITY.md
    # The committed document must list exactly the checks the suite makes
    # (scenario, target, input); the observed figures change run to run.
    checks() { grep '^| `' "$1" | awk -F' [|] ' '{print $1" | "$2" | "$3}' | sort; }
    if ! diff <(checks RELIABILITY.md) <(checks target/RELIABILITY.md); then
        echo "RELIABILITY.md does not list the suite's checks: regenerate it with bash scripts/reliability.sh" >&2
        exit 1
    fi
fi

step "RELIABILITY.md is current"
reliability_is_current RELIABILITY.md
