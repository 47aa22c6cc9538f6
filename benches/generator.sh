#!/usr/bin/env bash
# The metrics-generator's CPU cost per span at full ingest, for BENCHMARKS.md: the same
# loadgen ingest into a release vivace twice, with the generator off and with both processors
# on (remote-writing every 15 s to a local Prometheus, so encoding and sending are counted).
# Reports server CPU seconds for each run and the generator thread's own CPU seconds.
#   benches/generator.sh [spans] [connections]
set -euo pipefail
SPANS=${1:-500000}
CONNS=${2:-16}
cd "$(dirname "$0")/.."
cargo build --release --bin vivace --bench loadgen >&2
LG=$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)
PROM=${VIVACE_PROMETHEUS_BIN:-/usr/bin/prometheus}
DIR=$(mktemp -d)
VP=; PP=
trap 'kill $VP $PP 2>/dev/null || true; rm -rf "$DIR"' EXIT
printf 'global: {scrape_interval: 1m}\n' > "$DIR/prom.yml"
"$PROM" --web.enable-remote-write-receiver --config.file="$DIR/prom.yml" \
  --storage.tsdb.path="$DIR/tsdb" --web.listen-address=127.0.0.1:29090 2> "$DIR/prom.log" &
PP=$!
until curl -sf localhost:29090/-/ready >/dev/null; do sleep 0.2; done

run() { # $1 = processors list, $2 = label
  rm -rf "$DIR/wal" "$DIR/blocks"
  cat > "$DIR/cfg.yaml" <<CFG
server: {http_listen_address: 127.0.0.1, http_listen_port: 23200}
distributor:
  receivers:
    otlp:
      protocols:
        grpc: {endpoint: "127.0.0.1:24317"}
ingester: {trace_idle_period: 2s, max_block_duration: 15s, flush_check_period: 1s}
compactor: {compaction: {compaction_cycle: 24h}}
metrics_generator:
  # The loadgen builds every request before sending: keep its older spans.
  metrics_ingestion_time_range_slack: 0s
  storage:
    remote_write: [{url: "http://127.0.0.1:29090/api/v1/write"}]
overrides: {defaults: {ingestion: {rate_limit_bytes: 0}, metrics_generator: {processors: $1}}}
storage:
  trace:
    wal: {path: $DIR/wal}
    local: {path: $DIR/blocks}
CFG
  target/release/vivace serve --config.file="$DIR/cfg.yaml" 2> "$DIR/vivace-$2.log" &
  VP=$!
  until curl -sf localhost:23200/ready >/dev/null; do sleep 0.2; done
  local c0 c1 g1 acked
  c0=$(awk '{print ($14+$15)/100}' /proc/$VP/stat)
  "$LG" ingest --endpoint http://127.0.0.1:24317 --spans "$SPANS" --connections "$CONNS" \
    --batch-spans 500 --manifest "$DIR/ids.txt" > "$DIR/ingest-$2.json"
  # Let the generator drain its queue and run one more collection.
  sleep 16
  c1=$(awk '{print ($14+$15)/100}' /proc/$VP/stat)
  g1=0
  for t in /proc/$VP/task/*; do
    if [ "$(cat "$t/comm")" = "metrics-generat" ]; then
      g1=$(awk '{print ($14+$15)/100}' "$t/stat")
    fi
  done
  acked=$(sed 's/.*"spans_acked":\([0-9]*\).*/\1/' "$DIR/ingest-$2.json")
  gen=$(curl -s localhost:23200/metrics | awk '/^vivace_generator_spans_received_total /{print $2}')
  sent=$(curl -s localhost:23200/metrics | awk '/^vivace_generator_remote_write_samples_sent_total /{print $2}')
  awk -v l="$2" -v c="$c1" -v c0="$c0" -v g="$g1" -v a="$acked" -v n="$gen" -v s="$sent" 'BEGIN {
    printf "{\"run\":\"%s\",\"acked_spans\":%d,\"server_cpu_s\":%.2f,\"generator_thread_cpu_s\":%.2f,\"generator_spans\":%d,\"samples_sent\":%d,\"generator_us_per_span\":%.3f}\n",
      l, a, c - c0, g, n, s, (n > 0 ? g * 1e6 / n : 0) }'
  kill $VP; wait $VP 2>/dev/null || true
}
run "[]" off
run "[service-graphs, span-metrics]" on
