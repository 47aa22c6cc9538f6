#!/usr/bin/env bash
# Memory under overload: a release vivace with a small live-trace budget, driven at full
# speed by more connections than it can serve. Prints the load generator's summary (acked,
# refused and retried spans), the server's peak RSS, and the refusal counters.
#   benches/overload.sh [spans] [connections] [max_live_bytes]
set -euo pipefail
SPANS=${1:-1000000}
CONNS=${2:-32}
LIVE=${3:-67108864}
cd "$(dirname "$0")/.."
cargo build --release --bin vivace --bench loadgen >&2
LG=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
DIR=$(mktemp -d)
trap 'kill $VP 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > "$DIR/cfg.yaml" <<CFG
server: {http_listen_address: 127.0.0.1, http_listen_port: 25200}
distributor:
  receivers:
    otlp:
      protocols:
        grpc: {endpoint: "127.0.0.1:25317"}
# Traces stay live for 10 s, so memory fills faster than blocks drain it.
ingester: {trace_idle_period: 10s, max_trace_live: 30s, max_block_duration: 30s, flush_check_period: 1s, max_live_bytes: $LIVE}
compactor: {compaction: {compaction_cycle: 24h}}
overrides: {defaults: {ingestion: {rate_limit_bytes: 0}}}
storage:
  trace:
    wal: {path: $DIR/wal}
    local: {path: $DIR/blocks}
CFG
target/release/vivace serve --config.file="$DIR/cfg.yaml" 2> "$DIR/vivace.log" &
VP=$!
until curl -sf localhost:25200/ready >/dev/null; do sleep 0.2; done
"$LG" ingest --endpoint http://127.0.0.1:25317 --spans "$SPANS" --connections "$CONNS" --batch-spans 500
echo "{\"max_live_bytes\":$LIVE,\"peak_rss_kib\":$(awk '/VmHWM/{print $2}' /proc/$VP/status)}"
curl -s localhost:25200/metrics | grep -E '^vivace_distributor_spans_(received|refused)_total'
