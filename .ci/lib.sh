# shellcheck shell=bash
# Set-up shared by `.ci/test` (the README's test command) and `.ci/run` (CI): sourced, never run.
#
# Everything here is idempotent and cheap when there is nothing to do: a server that answers on its
# port is left alone, a tool that `cargo` finds is not reinstalled. On a fresh machine it starts the
# servers the backend tests talk to and installs the cargo subcommands the suite runs, so that
# `.ci/test` alone works there (issue 9).

# Defaults for every script that sources this file; the caller's environment wins.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/millstream-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

ci_say() { echo "ci: $*" >&2; }

# --- servers ---------------------------------------------------------------------------------------
# Each backend's tests talk to the real server on its standard port on 127.0.0.1.

ci_port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ci_wait_port() { # port name: up to 60 s for a server that was just started
    local _
    for _ in $(seq 1 60); do ci_port_up "$1" && return 0; sleep 1; done
    ci_say "$2 did not come up on port $1"
    return 1
}

ci_ensure_server() { # port name start-command...: start the server when nothing answers on its port
    local port=$1 name=$2
    shift 2
    ci_port_up "$port" && return 0
    ci_say "starting $name (nothing answers on 127.0.0.1:$port)"
    # A start command that fails (already starting, pid file left over) is judged by the port alone.
    "$@" || true
    ci_wait_port "$port" "$name"
}

ci_services() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    ci_ensure_server 5432 postgresql \
        bash -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start'
    ci_ensure_server 3306 mariadb \
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
    ci_ensure_server 6379 redis \
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    ci_ensure_server 4222 nats \
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    ci_ensure_server 5672 rabbitmq rabbitmq-server -detached
    ci_ensure_server 1883 mosquitto mosquitto -d -c /etc/mosquitto/mosquitto.conf
    ci_kafka
}

# Kafka: tansu 0.6.0, a Kafka-compatible broker written in Rust (no Kafka package on this
# machine's registries, no Docker). Installed from crates.io when missing (about 10 minutes on 2
# cores, once per machine; later versions, renamed nisshi, need a newer rustc), then started on
# 127.0.0.1:9092 with SQLite storage in /var/lib/tansu, so messages and offsets survive a restart.
ci_kafka() {
    ci_ensure_tool tansu tansu --version 0.6.0 --no-default-features --features dynostore,libsql
    local bin
    bin=$(command -v tansu)
    # shellcheck disable=SC2016 # expanded by the inner bash
    local start=(bash -c 'mkdir -p /var/lib/tansu && cd /var/lib/tansu &&
        setsid nohup "$0" broker --storage-engine sqlite://tansu.db \
            --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
            >>/var/log/tansu.log 2>&1 </dev/null &' "$bin")
    ci_ensure_server 9092 tansu "${start[@]}"
    # A tansu whose storage task panicked still listens but answers nothing (/var/log/tansu.log
    # shows why): started again, its SQLite file keeps what it held.
    if ! ci_kafka_answers 9092; then
        ci_say "tansu listens on 127.0.0.1:9092 but answers no metadata request; starting it again"
        local signal
        for signal in TERM KILL; do
            pkill "-$signal" -f 'tansu broker .*tcp://127.0.0.1:9092' || true
            for _ in $(seq 1 15); do ci_port_up 9092 || break 2; sleep 1; done
        done
        ci_ensure_server 9092 tansu "${start[@]}"
        ci_kafka_answers 9092 || ci_say "tansu on 127.0.0.1:9092 still answers no metadata request"
    fi
    # tansu 0.6's SQLite engine reads each fetched record's headers with a query that scans the
    # whole `header` table (no index): fetches slow down as the database grows, until they
    # outlast a consumer group's session and the group rebalances for ever (the Kafka bench
    # stalled so). An index makes that a lookup; tansu's own schema leaves it alone on restart.
    python3 -c 'import sqlite3
db = sqlite3.connect("/var/lib/tansu/tansu.db", timeout=60)
db.execute("create index if not exists header_topition_offset_id on header (topition, offset_id)")
db.commit()' || echo "ci: could not index tansu's header table (/var/lib/tansu/tansu.db)" >&2
}

ci_kafka_answers() { # port: a Kafka Metadata request (v1, every topic) is answered within 20 s
    python3 - "$1" <<'PY'
import socket, struct, sys
client = b"millstream-ci"
request = struct.pack(">hhih", 3, 1, 7, len(client)) + client + struct.pack(">i", -1)
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20) as s:
        s.sendall(struct.pack(">i", len(request)) + request)
        head = b""
        while len(head) < 8:
            chunk = s.recv(8 - len(head))
            if not chunk:
                sys.exit(1)
            head += chunk
        size, correlation = struct.unpack(">ii", head)
        sys.exit(0 if correlation == 7 and size > 4 else 1)
except OSError:
    sys.exit(1)
PY
}

# --- tools -----------------------------------------------------------------------------------------
# Cargo subcommands are looked up the way `cargo` itself does (PATH and $CARGO_HOME/bin), so a tool
# that is installed but not on PATH is still found. `cargo install` builds in its own temporary
# directory (never in the project's CARGO_TARGET_DIR), or in $CI_TOOLS_TARGET_DIR when that is set:
# CI sets it so that the fresh-clone check can install the tools again cheaply. Cargo rebuilds a
# dependency whose source path changed, so such kept builds are only reused when the sources are
# read from the same CARGO_HOME: $CI_TOOLS_CARGO_HOME, when set, is the one `cargo install` uses.

ci_install_root_bin() { echo "${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"; }

ci_ensure_tool() { # probe-command crate [cargo install options...]: install `crate` when probe fails
    local probe=$1 crate=$2
    shift 2
    # shellcheck disable=SC2086 # the probe is a command line
    if $probe --version >/dev/null 2>&1; then return 0; fi
    ci_say "installing $crate (\`$probe\` is missing; once per machine, a few minutes)"
    if [ -n "${CI_TOOLS_TARGET_DIR:-}" ]; then
        CARGO_HOME="${CI_TOOLS_CARGO_HOME:-${CARGO_HOME:-$HOME/.cargo}}" CARGO_TARGET_DIR="$CI_TOOLS_TARGET_DIR" \
            cargo install --locked --quiet "$crate" "$@"
    else
        (unset CARGO_TARGET_DIR && cargo install --locked --quiet "$crate" "$@")
    fi
    local bin
    bin=$(ci_install_root_bin)
    case ":$PATH:" in *":$bin:"*) ;; *) export PATH="$bin:$PATH" ;; esac
    # shellcheck disable=SC2086
    if ! $probe --version >/dev/null 2>&1; then
        ci_say "$crate was installed but \`$probe --version\` still fails"
        return 1
    fi
}

ci_tools() {
    ci_ensure_tool "cargo nextest" cargo-nextest
    # The expansion snapshots of the macros (`macros/tests/expand.rs`, macrotest) run `cargo expand`,
    # and cargo-expand formats its output with rustfmt, a toolchain component it cannot install.
    ci_ensure_tool "cargo expand" cargo-expand
    if ! rustfmt --version >/dev/null 2>&1; then
        ci_say "rustfmt is missing: \`rustup component add rustfmt\`"
        return 1
    fi
    ci_asyncapi_schema
    ci_chromium
}

# Headless Chromium for the documentation page's browser check (`.ci/docs-page-check`), from
# Debian's packages.
ci_chromium() {
    command -v chromium >/dev/null 2>&1 && return 0
    ci_say "installing chromium (Debian's package; once per machine, about a minute)"
    if [ "$(id -u)" != 0 ]; then
        ci_say "chromium is missing and installing it needs root: \`apt-get install chromium\`"
        return 1
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# The AsyncAPI 3.0 JSON schema the generated documents are validated against
# (`runtime/tests/handling/asyncapi.rs`), from the npm registry's `@asyncapi/specs`.
MILLSTREAM_ASYNCAPI_DIR=/tmp/millstream-asyncapi-specs
ci_asyncapi_schema() {
    local schema="$MILLSTREAM_ASYNCAPI_DIR/package/schemas/3.0.0-without-\$id.json"
    [ -f "$schema" ] && return 0
    ci_say "fetching the AsyncAPI 3.0 JSON schema (@asyncapi/specs from the npm registry)"
    mkdir -p "$MILLSTREAM_ASYNCAPI_DIR"
    (cd "$MILLSTREAM_ASYNCAPI_DIR" && npm pack --silent @asyncapi/specs@6.11.1 >/dev/null && tar xzf asyncapi-specs-6.11.1.tgz)
    [ -f "$schema" ] || { ci_say "the AsyncAPI schema was not found in @asyncapi/specs"; return 1; }
}
