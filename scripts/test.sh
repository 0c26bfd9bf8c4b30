#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this):
#   formatting and lints, unit tests, the store contract suite, the
#   integration tests against a real MariaDB, the multi-process cluster tests
#   against real Redis, pm2 and nginx (one of them with the page in a real
#   headless Chromium), the domain-event tests against a real RabbitMQ, a real
#   Prometheus scraping the server, then the browser test in a real headless
#   Chromium.
# Whatever is missing (MariaDB, Redis, RabbitMQ, nginx, pm2, Prometheus, Chromium, Node packages)
# is installed or started first. Every test database is uniquely named and dropped.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/ensure.sh

command -v cargo >/dev/null 2>&1 \
  || die "cargo not found: install Rust with rustup (https://rustup.rs), then rerun"
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

ensure_mariadb
ensure_redis
ensure_rabbitmq
ensure_nginx_pm2
ensure_prometheus
# Chromium and playwright-core: the browser test below, and the cluster
# test that runs the page through a rolling restart (tests/cluster/page_rolling.rs).
ensure_chromium
ensure_node_deps

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings

log "cargo test (unit, store contract, integration, cluster, pm2 + nginx, Prometheus)"
cargo test --all-targets --quiet

log "browser test"
cargo build --quiet --bin chat-server
BROWSER_DB="chat_browser_$$_$RANDOM"
cleanup() { mysql_exec "DROP DATABASE IF EXISTS \`$BROWSER_DB\`" >/dev/null 2>&1 || true; }
trap cleanup EXIT
BROWSER_TEST_MYSQL_URL="$TEST_MYSQL_URL/$BROWSER_DB" \
  CHAT_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/chat-server" \
  node tests/browser/chat.e2e.mjs

log "all tests passed"
