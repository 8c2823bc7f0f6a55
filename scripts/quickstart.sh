#!/usr/bin/env bash
# CronCommander quickstart: builds, starts a listener on loopback with a fresh
# SQLite file, creates an agent key and an operator token, starts an agent in
# user mode (as cc-agent-user when run as root), then drives it with ccctl as
# an operator would (ccctl agents, ccctl run, ccctl job), and keeps both
# running until Ctrl-C. Its work directory (database, keys, logs) is
# removed when it stops.
#
#   CC_QUICKSTART_BIN_DIR=DIR   use binaries already built in DIR (no build)
#   CC_QUICKSTART_ONCE=1        stop after printing the report (for tests)
#   CARGO_TARGET_DIR=DIR        honoured: the build goes there, and the
#                               binaries are taken from DIR/release
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

bin_dir="${CC_QUICKSTART_BIN_DIR:-}"
if [ -z "$bin_dir" ]; then
    if ! command -v cargo >/dev/null; then
        echo "quickstart: cargo not found on PATH: install Rust 1.85 or newer (https://rustup.rs), open a new shell, and run this again; or set CC_QUICKSTART_BIN_DIR to a directory of built binaries" >&2
        exit 1
    fi
    say "building (release; about 8 minutes on 2 cores the first time)"
    cargo build --release --bins
    # Where cargo put them: target/, or CARGO_TARGET_DIR, or build.target-dir.
    target_dir="$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    bin_dir="${target_dir:-${CARGO_TARGET_DIR:-$PWD/target}}/release"
fi
bin_dir="$(cd "$bin_dir" && pwd)"

work="$(mktemp -d /tmp/croncommander-quickstart.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

say "listener: fresh database in $work"
token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$token" > "$work/admin-token"
chmod 600 "$work/admin-token"
"$bin_dir/cc-listener" keys add quickstart-host --db "$work/listener.db" > "$work/agent.key"
chmod 600 "$work/agent.key"
"$bin_dir/cc-listener" serve --db "$work/listener.db" --admin-token-file "$work/admin-token" \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 > "$work/listener.out" 2> "$work/listener.log" &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/listener.out" ] && break; sleep 0.1; done
banner="$(head -n1 "$work/listener.out")"
[ -n "$banner" ] || { cat "$work/listener.log" >&2; exit 1; }
agent_addr="$(sed -E 's|.*agents on ws://([^/]+)/agent.*|\1|' <<<"$banner")"
admin_port="$(sed -E 's|.*operators on http://127.0.0.1:([0-9]+)/.*|\1|' <<<"$banner")"
echo "$banner"
echo "console: http://127.0.0.1:$admin_port/ui/ (log in with the token in $work/admin-token)"

# The operator API over bash's /dev/tcp: nothing to install.
api() { # METHOD PATH [JSON]
    local body="${3:-}"
    exec 3<>"/dev/tcp/127.0.0.1/$admin_port"
    printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' \
        "$1" "$2" "$token" "${#body}" "$body" >&3
    sed '1,/^\r$/d' <&3
    exec 3>&-
}

say "agent: user mode"
mkdir -p "$work/agent-state"
chmod 700 "$work/agent-state"
cat > "$work/agent.toml" <<TOML
listener_url = "ws://$agent_addr/agent"
api_key_file = "-"
hostname = "quickstart-host"
tags = ["quickstart"]
execution_mode = "user"
heartbeat_interval_secs = 10
state_dir = "$work/agent-state"
TOML
run_agent=("$bin_dir/cc-agent" run --config "$work/agent.toml")
if [ "$(id -u)" -eq 0 ]; then
    # The checkout may sit where cc-agent-user cannot go (root's 0700 home):
    # the agent runs from a copy in the work directory.
    install -m 0755 "$bin_dir/cc-agent" "$work/cc-agent"
    run_agent=("$work/cc-agent" run --config "$work/agent.toml")
    id cc-agent-user >/dev/null 2>&1 || useradd --system --user-group --home-dir /nonexistent \
        --no-create-home --shell /usr/sbin/nologin cc-agent-user
    # The key stays root's: it reaches the agent on its standard input, as
    # the packaged unit hands it over, so the agent's jobs cannot read it.
    chown cc-agent-user: "$work/agent.toml" "$work/agent-state"
    run_agent=(setpriv --reuid=cc-agent-user --regid=cc-agent-user --clear-groups "${run_agent[@]}")
    echo "running the agent as cc-agent-user (unprivileged)"
fi
"${run_agent[@]}" < "$work/agent.key" 2> "$work/agent.log" &
pids+=($!)
for _ in $(seq 100); do api GET /api/v1/agents | grep -q '"connected":true' && break; sleep 0.1; done

# ccctl finds the listener and its token in these two variables.
export CC_URL="http://127.0.0.1:$admin_port"
export CC_TOKEN_FILE="$work/admin-token"
ccctl="$bin_dir/ccctl"

say "ccctl agents"
"$ccctl" agents

say "ccctl run quickstart-host -- /bin/sh -c 'echo hello from CronCommander; id -un'"
"$ccctl" run quickstart-host -- /bin/sh -c 'echo hello from CronCommander; id -un'

say "ccctl job ID: the report of a job"
started="$("$ccctl" run --no-wait quickstart-host -- /bin/sh -c 'echo hello from CronCommander; id -un')"
run_id="$(sed -n 's/^run //p' <<<"$started")"
job_id="$(sed -n 's/^quickstart-host //p' <<<"$started")"
"$ccctl" run watch "$run_id" > /dev/null
"$ccctl" job "$job_id"

if [ "${CC_QUICKSTART_ONCE:-}" = 1 ]; then
    exit 0
fi
cat <<TXT

Listener and agent are running. In another shell:
  export CC_URL=$CC_URL CC_TOKEN_FILE=$CC_TOKEN_FILE
  $ccctl agents
  $ccctl run --tag quickstart -- /usr/bin/uptime
  $ccctl reports --host quickstart-host
The console: http://127.0.0.1:$admin_port/ui/ (log in with the token in $CC_TOKEN_FILE).
Logs: $work/listener.log, $work/agent.log.
Ctrl-C stops both and removes $work.
TXT
wait
