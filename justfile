# Developer tasks for the order service. `just` lists them; `just --show NAME` prints one.
# Postgres and NATS JetStream are real dependencies: recipes that need them run `services` first,
# which uses the machine's own when they answer and starts private ones under .data otherwise.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

# Every variable can be overridden from the environment (or `just VAR=value recipe`).
export DATABASE_URL := env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/order_service")
# sqlx::test creates one database per test from this URL, so its role needs CREATEDB.
export TEST_DATABASE_URL := env("TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
export NATS_URL := env("NATS_URL", "nats://127.0.0.1:4222")

# List available recipes
_default:
    @just --list

# Make sure Postgres and NATS JetStream answer (starts private ones under .data if not)
services:
    @scripts/services.sh

# Stop only the private Postgres/NATS that `services` started (never the machine's own)
services-stop:
    @scripts/services.sh stop

# Build every crate of the workspace
build:
    cargo build --workspace

# Apply the database migrations to DATABASE_URL
migrate: services
    cargo run -q -p order-api --bin order-service -- migrate

# Build, start the service on 127.0.0.1:8080 and walk through a signed order flow (Ctrl-C stops)
run *ARGS: services
    scripts/demo.sh "$@"

# Run all tests against real Postgres and NATS (nextest when installed, plus doctests)
test *ARGS: services
    #!/usr/bin/env bash
    set -euo pipefail
    export DATABASE_URL="$TEST_DATABASE_URL"
    # The soak scenarios run the real binary, which a library dependency does not build.
    cargo build -p order-api --bin order-service
    if cargo nextest --version >/dev/null 2>&1; then
        # nextest skips doctests: run them first, so that nextest's summary closes the output.
        status=0
        cargo test --doc --workspace || status=$?
        cargo nextest run --workspace --no-fail-fast "$@" || status=$?
        exit "$status"
    else
        cargo test --workspace "$@"
    fi

# The reliability suite (docs/reliability.md) at full scale: replicas killed, broker and database stopped,
# concurrent confirms, poison messages, leader failover, the feed under 24 writers, a JetStream
# cluster losing nodes, reads from a Postgres standby, and the inbound model test over many more
# delivery schedules (~8 min)
soak *ARGS: services
    #!/usr/bin/env bash
    set -euo pipefail
    export DATABASE_URL="$TEST_DATABASE_URL"
    cargo build -p order-api --bin order-service
    # One scenario at a time, output shown: each prints its figures (also in target/soak/).
    if cargo nextest --version >/dev/null 2>&1; then
        SOAK=full cargo nextest run -p order-tests --no-fail-fast --no-capture \
            -E 'test(/soak_/) | test(/inbound::model::/)' "$@"
    else
        SOAK=full cargo test -p order-tests --test integration soak_ "$@" -- --nocapture --test-threads=1
        SOAK=full cargo test -p order-tests --test integration inbound::model:: "$@" -- --nocapture
    fi

# Target names after SECONDS run only those. Needs cargo-fuzz (installed on first use) and
# libFuzzer's nightly flags, which RUSTC_BOOTSTRAP=1 unlocks on the stable toolchain. Crashes
# land in fuzz/artifacts/TARGET; the corpus grows in fuzz/corpus/TARGET (both git-ignored).
# FUZZ_TARGET_DIR (default fuzz/target) and FUZZ_SANITIZER (default address) can be set.
# Run each cargo-fuzz target in fuzz/ for SECONDS (default 60) and print its executions
fuzz SECONDS="60" *TARGETS:
    #!/usr/bin/env bash
    set -euo pipefail
    seconds="$1"; shift
    cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz
    export RUSTC_BOOTSTRAP=1
    # Its own target dir: sanitizer flags would otherwise invalidate the main build's artifacts.
    export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-fuzz/target}"
    targets=("$@")
    [ "${#targets[@]}" -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
    # -a: debug assertions and overflow checks, so an arithmetic overflow is a finding too.
    flags=(-a -s "${FUZZ_SANITIZER:-address}")
    cargo fuzz build "${flags[@]}"
    summary=()
    for t in "${targets[@]}"; do
        mkdir -p "fuzz/corpus/$t"
        log="$CARGO_TARGET_DIR/fuzz-$t.log"
        status=0
        cargo fuzz run "${flags[@]}" "$t" -- -max_total_time="$seconds" -print_final_stats=1 \
            >"$log" 2>&1 || status=$?
        execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
        if [ "$status" -ne 0 ]; then
            tail -n 40 "$log"
            summary+=("$t: FAILED after ${execs:-?} executions (exit $status; see $log and fuzz/artifacts/$t)")
        else
            summary+=("$t: ${execs:-?} executions in ${seconds} s, no crash")
        fi
    done
    printf '%s\n' "${summary[@]}"
    ! printf '%s\n' "${summary[@]}" | grep -q FAILED

# Measure every speed goal as a ratio against this machine's own limits (`just bench quick`: ~2 min;
# `just bench quick B6` measures only the named goals)
bench *ARGS: services
    cargo build --release -p order-api --bin order-service
    cargo bench -p order-tests --bench order_bench -- "$@"

# Conformance of the service to its own /openapi.json: starts the service on 127.0.0.1:18089
# with its own database, then runs Schemathesis (PyPI, installed into target/openapi-check/venv
# on first use, which needs the network once) against the served document, every request
# signed by scripts/openapi_check_hooks.py. Fails on a 5xx, a schema-valid request refused, or
# an answer that does not match the document. Optional: `just test` never depends on it.
# Extra arguments go to `st run` (e.g. `just openapi-check --max-examples 200`).
openapi-check *ARGS: services
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build -q -p order-api --bin order-service
    target_dir="${CARGO_TARGET_DIR:-target}"
    mkdir -p "$target_dir/openapi-check"
    work="$(cd "$target_dir/openapi-check" && pwd)"
    scripts="$PWD/scripts"
    venv="$work/venv"
    if ! "$venv/bin/st" --version 2>/dev/null | grep -q '4.32.5'; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet 'schemathesis==4.32.5'
    fi
    addr=127.0.0.1:18089
    db_url="${OPENAPI_CHECK_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/order_service_openapi_check}"
    # A fresh database each run, so that a run does not depend on the one before.
    if command -v psql >/dev/null; then
        psql -q "${db_url%/*}/postgres" \
            -c "DROP DATABASE IF EXISTS \"${db_url##*/}\" WITH (FORCE)" >/dev/null
    fi
    # Any 32 bytes do: the service and the hooks only need to agree.
    secret="openapi-check-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    DATABASE_URL="$db_url" HTTP_ADDR="$addr" JOBS_ENABLED=false \
        INTERNAL_SERVICE_SECRET="$secret" \
        "$target_dir/debug/order-service" serve >"$work/service.log" 2>&1 &
    pid=$!
    trap 'kill "$pid" 2>/dev/null || true' EXIT
    for _ in $(seq 1 120); do
        curl -sf "http://$addr/openapi.json" -o "$work/openapi.json" && break
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$work/service.log"; exit 1; }
        sleep 0.5
    done
    # Bounded twice: at most 100 cases per operation and phase, and 10 minutes in all. Run from
    # $work, where Schemathesis keeps its .schemathesis/ store of failures to replay.
    # Left out: ignored_auth (the hooks sign every request by design; tests/integration's
    # auth_matrix covers unsigned ones) and negative_data_rejection (the service is lenient
    # where the document is strict: query numbers beyond 64 bits saturate, and Schemathesis
    # reads int64 as a bound).
    cd "$work"
    PYTHONPATH="$scripts" SCHEMATHESIS_HOOKS=openapi_check_hooks OPENAPI_CHECK_SECRET="$secret" \
        timeout 600 "$venv/bin/st" --config-file "$scripts/openapi-check.toml" run \
        "http://$addr/openapi.json" \
        --phases examples,coverage,fuzzing \
        --checks all --exclude-checks ignored_auth,negative_data_rejection \
        --max-examples 100 --seed 25 --workers 1 --request-timeout 10 \
        --report junit --report-dir report "$@"

# Check the operations kit in deploy/: promtool on the alert rules and their unit tests, and
# nats-server on the cluster configuration (`just test` checks the same, plus the metric names)
deploy-check:
    promtool check rules deploy/prometheus/order-service.rules.yml
    promtool test rules deploy/prometheus/order-service.rules.test.yml
    NATS_SERVER_NAME=n0 NATS_LISTEN=127.0.0.1:4222 NATS_MONITOR_LISTEN=127.0.0.1:8222 \
        NATS_STORE_DIR=/tmp/nats-conf-check NATS_CLUSTER_NAME=orders \
        NATS_CLUSTER_LISTEN=127.0.0.1:6222 NATS_ROUTE_1=nats://127.0.0.1:6222 \
        NATS_ROUTE_2=nats://127.0.0.1:6223 NATS_ROUTE_3=nats://127.0.0.1:6224 \
        nats-server -c deploy/nats/cluster.conf -t
    python3 -m json.tool deploy/grafana/order-service.json >/dev/null

# A three-node JetStream cluster on loopback from deploy/nats/cluster.conf (`start`, `stop`,
# `status`, `kill N`, `restart N`); `start` prints the NATS_URL to give the service
nats-cluster *ARGS:
    scripts/nats-cluster.sh "$@"

# Check formatting and lints (clippy warnings are errors)
lint: _fmt-check _clippy _doc-check

# Format all code
fmt:
    cargo fmt --all

# Stop private services, then delete .data (their databases, streams and logs)
clean-data:
    @scripts/services.sh clean

# What CI runs: lint, then the tests
ci: lint test

# rustfmt in check mode
_fmt-check:
    cargo fmt --all -- --check

# clippy on every target, warnings denied
_clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# rustdoc on every crate, warnings denied (broken or private intra-doc links)
_doc-check:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
