#!/usr/bin/env bash
# A real S3-compatible server (s3s-fs) on 127.0.0.1 for the object-store tests.
#
# Sourced by other scripts:
#
#     source scripts/s3-server.sh
#     s3_server_install            # once per machine; the binary is cached
#     s3_server_start              # exports FLOWSTATE_S3_* (below)
#     trap s3_server_stop EXIT     # stops it on success and on failure
#
# (call s3_server_start in the script's own shell, not in $(...) or a pipeline:
# the exports, and so the way to stop the server, would be lost with the subshell)
#
# or run on its own, keeping the server across commands:
#
#     eval "$(bash scripts/s3-server.sh start)"
#     ...
#     bash scripts/s3-server.sh stop       # reads FLOWSTATE_S3_PID and FLOWSTATE_S3_ROOT
#
# s3s-fs serves a directory: each directory under it is a bucket. Requests are
# SigV4-signed, region us-east-1, path-style, plain http.
#
# Exported by s3_server_start:
#   FLOWSTATE_S3_ENDPOINT           http://127.0.0.1:<port>
#   FLOWSTATE_S3_BUCKET             flowstate
#   FLOWSTATE_S3_ACCESS_KEY_ID      flowstate
#   FLOWSTATE_S3_SECRET_ACCESS_KEY  random per run
#   FLOWSTATE_S3_REGION             us-east-1
#   FLOWSTATE_S3_PORT               <port>
#   FLOWSTATE_S3_PID                the server's process id
#   FLOWSTATE_S3_ROOT               the directory it serves: buckets are its subdirectories,
#                                   beside s3s-fs's own hidden .bucket-*/.upload* files
#   FLOWSTATE_S3_BIN                the s3s-fs binary
#   FLOWSTATE_S3_LOG                the server's output
# A test may kill the server and start it again on the same port and root with
#   "$FLOWSTATE_S3_BIN" --host 127.0.0.1 --port "$FLOWSTATE_S3_PORT" \
#       --access-key "$FLOWSTATE_S3_ACCESS_KEY_ID" --secret-key "$FLOWSTATE_S3_SECRET_ACCESS_KEY" \
#       "$FLOWSTATE_S3_ROOT"
# (a server started that way is the test's to stop).
#
# If FLOWSTATE_S3_ENDPOINT is already set, the caller points at its own server:
# s3_server_start and s3_server_stop leave everything alone.
#
# Needs at run time only bash, coreutils, sed and awk (no curl, no python).

S3_SERVER_VERSION=0.14.1
# Outside the clone, so the build (minutes) happens once per machine.
S3_SERVER_CACHE="${FLOWSTATE_CACHE:-${HOME:-/root}/.cache/flowstate}"
S3_SERVER_BIN="$S3_SERVER_CACHE/bin/s3s-fs"
# Written into the temporary directory by s3_server_start; s3_server_stop only
# kills and deletes what carries it.
S3_SERVER_MARKER=.flowstate-s3-server

# True when the cached binary runs and reports the pinned version.
_s3_server_installed() {
    [ -x "$S3_SERVER_BIN" ] || return 1
    local out
    out=$("$S3_SERVER_BIN" --version 2>/dev/null) || return 1
    case "$out" in
        *"$S3_SERVER_VERSION"*) return 0 ;;
        *) return 1 ;;
    esac
}

s3_server_install() {
    if _s3_server_installed; then
        return 0
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        echo "s3-server: cargo is needed to install s3s-fs" >&2
        return 1
    fi
    echo "s3-server: installing s3s-fs $S3_SERVER_VERSION into $S3_SERVER_CACHE/bin (takes a few minutes, once)" >&2
    # A throwaway target directory: the build does not touch (or wait for the
    # lock of) the project's CARGO_TARGET_DIR.
    local build
    build=$(mktemp -d) || return 1
    if ! cargo install s3s-fs --version "$S3_SERVER_VERSION" --locked --features binary \
        --root "$S3_SERVER_CACHE" --target-dir "$build" --force --quiet; then
        rm -rf "$build"
        echo "s3-server: installing s3s-fs failed" >&2
        return 1
    fi
    rm -rf "$build"
    if ! _s3_server_installed; then
        echo "s3-server: $S3_SERVER_BIN does not report version $S3_SERVER_VERSION" >&2
        return 1
    fi
}

# Succeeds once something accepts connections on 127.0.0.1:$1.
_s3_server_listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True when process $1 is the one listening on 127.0.0.1:$2, not merely that
# something is: a server that lost the port to another process exits, but only
# after a moment. Where /proc cannot tell (not Linux), it must still be alive
# a little after the port answered.
_s3_server_owns_port() {
    local pid=$1 port=$2 inodes fd link inode listening
    if [ -r /proc/net/tcp ]; then
        # Inodes of the sockets listening (state 0A) on 127.0.0.1:$port.
        inodes=$(awk -v a="0100007F:$(printf '%04X' "$port")" '$2 == a && $4 == "0A" { print $10 }' /proc/net/tcp)
        for fd in "/proc/$pid/fd/"*; do
            link=$(readlink "$fd" 2>/dev/null) || continue
            case "$link" in
                "socket:["*"]") inode=${link#socket:[} && inode=${inode%]} ;;
                *) continue ;;
            esac
            for listening in $inodes; do
                if [ "$listening" = "$inode" ]; then return 0; fi
            done
        done
        return 1
    fi
    sleep 0.5
    kill -0 "$pid" 2>/dev/null
}

# A port nobody listens on, from a random start in 20000-59999 so parallel runs
# rarely pick the same one. (The server binding it is the real check: a lost
# race makes it exit, and s3_server_start tries another.)
_s3_server_free_port() {
    local port=$((20000 + RANDOM % 40000)) tries
    for ((tries = 0; tries < 200; tries++)); do
        if ! _s3_server_listening "$port"; then
            echo "$port"
            return 0
        fi
        port=$((port + 1))
        if [ "$port" -gt 59999 ]; then port=20000; fi
    done
    echo "s3-server: found no free port" >&2
    return 1
}

# True while $1 is the s3s-fs serving $2 (guards against a reused pid).
_s3_server_is_ours() {
    local pid=$1 root=$2 args
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        # (2>/dev/null first: the process may exit while this reads.)
        args=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
    else
        args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
    fi
    case "$args" in
        *s3s-fs*"$root"*) return 0 ;;
        *) return 1 ;;
    esac
}

# TERM, up to 5 s to exit, then KILL.
_s3_server_kill() {
    local pid=$1 root=$2 i
    _s3_server_is_ours "$pid" "$root" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        _s3_server_is_ours "$pid" "$root" || break
        sleep 0.1
    done
    if _s3_server_is_ours "$pid" "$root"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Reaps it when it is this shell's child; harmless otherwise.
    wait "$pid" 2>/dev/null || true
}

s3_server_start() {
    if [ -n "${FLOWSTATE_S3_ENDPOINT:-}" ]; then
        echo "s3-server: using FLOWSTATE_S3_ENDPOINT=$FLOWSTATE_S3_ENDPOINT" >&2
        return 0
    fi
    if ! _s3_server_installed; then
        echo "s3-server: $S3_SERVER_BIN is missing; run s3_server_install (scripts/setup.sh does)" >&2
        return 1
    fi

    local dir root log secret port pid attempt waited
    dir=$(mktemp -d "${TMPDIR:-/tmp}/flowstate-s3.XXXXXX") || return 1
    : >"$dir/$S3_SERVER_MARKER"
    root="$dir/root"
    log="$dir/s3s-fs.log"
    mkdir -p "$root/flowstate"
    secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

    for ((attempt = 1; attempt <= 3; attempt++)); do
        port=$(_s3_server_free_port) || break
        "$S3_SERVER_BIN" --host 127.0.0.1 --port "$port" \
            --access-key flowstate --secret-key "$secret" \
            "$root" </dev/null >"$log" 2>&1 &
        pid=$!
        # Up once it accepts connections; given up on after 30 s.
        for ((waited = 0; waited < 300; waited++)); do
            if ! kill -0 "$pid" 2>/dev/null; then
                break # exited: most likely the port was taken meanwhile
            fi
            if _s3_server_listening "$port" && _s3_server_owns_port "$pid" "$port"; then
                export FLOWSTATE_S3_ENDPOINT="http://127.0.0.1:$port"
                export FLOWSTATE_S3_BUCKET=flowstate
                export FLOWSTATE_S3_ACCESS_KEY_ID=flowstate
                export FLOWSTATE_S3_SECRET_ACCESS_KEY="$secret"
                export FLOWSTATE_S3_REGION=us-east-1
                export FLOWSTATE_S3_PORT="$port"
                export FLOWSTATE_S3_PID="$pid"
                export FLOWSTATE_S3_ROOT="$root"
                export FLOWSTATE_S3_BIN="$S3_SERVER_BIN"
                export FLOWSTATE_S3_LOG="$log"
                echo "s3-server: s3s-fs on $FLOWSTATE_S3_ENDPOINT (pid $pid, root $root)" >&2
                return 0
            fi
            sleep 0.1
        done
        echo "s3-server: s3s-fs did not come up on port $port (attempt $attempt); its output:" >&2
        sed 's/^/    /' "$log" >&2
        _s3_server_kill "$pid" "$root"
    done
    rm -rf "$dir"
    echo "s3-server: could not start s3s-fs" >&2
    return 1
}

# Safe to call more than once, and when the server was never started.
s3_server_stop() {
    local pid="${FLOWSTATE_S3_PID:-}" root="${FLOWSTATE_S3_ROOT:-}" dir
    [ -n "$root" ] || return 0
    dir=$(dirname "$root")
    # Only what s3_server_start made: never a server the caller pointed at.
    [ -f "$dir/$S3_SERVER_MARKER" ] || return 0
    if [ -n "$pid" ]; then
        _s3_server_kill "$pid" "$root"
    fi
    rm -rf "$dir"
    unset FLOWSTATE_S3_ENDPOINT FLOWSTATE_S3_BUCKET FLOWSTATE_S3_ACCESS_KEY_ID \
        FLOWSTATE_S3_SECRET_ACCESS_KEY FLOWSTATE_S3_REGION FLOWSTATE_S3_PORT \
        FLOWSTATE_S3_PID FLOWSTATE_S3_ROOT FLOWSTATE_S3_BIN FLOWSTATE_S3_LOG
    return 0
}

# Run on its own rather than sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        install)
            s3_server_install
            ;;
        start)
            s3_server_install
            s3_server_start
            # For eval in the calling shell.
            for var in ENDPOINT BUCKET ACCESS_KEY_ID SECRET_ACCESS_KEY REGION PORT PID ROOT BIN LOG; do
                name="FLOWSTATE_S3_$var"
                if [ -n "${!name:-}" ]; then
                    printf 'export %s=%q\n' "$name" "${!name}"
                fi
            done
            ;;
        stop)
            s3_server_stop
            ;;
        *)
            echo "usage: $0 install | start | stop" >&2
            echo "  start prints exports: eval \"\$(bash $0 start)\"" >&2
            exit 2
            ;;
    esac
fi
