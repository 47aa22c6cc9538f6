#!/usr/bin/env bash
# Ingest, storage and lookup figures for BENCHMARKS.md. Starts a release vivace on loopback
# ports with its data in a temp dir, drives it with the loadgen bench, and samples the
# server's CPU seconds and peak RSS from /proc.
#   benches/bench.sh [spans] [connections]
# IDLE and BLOCK_DURATION set the ingester's trace_idle_period and max_block_duration
# (default 2s and 15s: blocks are cut inside the window); IDLE=60s BLOCK_DURATION=60s keeps
# every trace in memory for the fresh-data searches (up to max_block_bytes, 256 MiB: about
# 600k spans of the default traffic). MAX_LIVE and ROW_GROUP set max_live_bytes and
# row_group_size_bytes (bytes) for memory experiments. WINDOW=60 makes the ingest window
# sustained: the loadgen sends for 60 s, going over its `spans` requests again as needed
# (fresh trace IDs and current times on each pass).
set -euo pipefail
SPANS=${1:-1000000}
CONNS=${2:-16}
cd "$(dirname "$0")/.."
# VIVACE_BIN and LOADGEN_BIN run prebuilt binaries (e.g. an older commit, for a before/after).
if [ -z "${VIVACE_BIN:-}" ]; then cargo build --release --bin vivace --bench loadgen >&2; fi
BIN=${VIVACE_BIN:-target/release/vivace}
LG=${LOADGEN_BIN:-$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)}
DIR=$(mktemp -d)
trap 'kill $VP 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > "$DIR/cfg.yaml" <<CFG
server: {http_listen_address: 127.0.0.1, http_listen_port: 23200}
distributor:
  receivers:
    otlp:
      protocols:
        grpc: {endpoint: "127.0.0.1:24317"}
        http: {endpoint: "127.0.0.1:24318"}
ingester: {trace_idle_period: ${IDLE:-2s}, max_block_duration: ${BLOCK_DURATION:-15s}, flush_check_period: 1s${MAX_LIVE:+, max_live_bytes: $MAX_LIVE}${ROW_GROUP:+, row_group_size_bytes: $ROW_GROUP}}
# No compaction while measuring: every figure is taken on the blocks the ingester cut.
compactor: {compaction: {compaction_cycle: 24h}}
# Limits lifted, as for Tempo's figures: the default 30 MB/s per tenant would refuse this load.
overrides: {defaults: {ingestion: {rate_limit_bytes: 0}}}
storage:
  trace:
    wal: {path: $DIR/wal}
    local: {path: $DIR/blocks}
CFG
"$BIN" serve --config.file="$DIR/cfg.yaml" 2> "$DIR/vivace.log" &
VP=$!
until curl -sf localhost:23200/ready >/dev/null; do
  kill -0 $VP 2>/dev/null || { tail -3 "$DIR/vivace.log"; exit 1; }
  sleep 0.2
done
cpu() { awk '{print ($14+$15)/100}' /proc/$VP/stat; }
# Searches carry start/end around the data, as Grafana's do.
start=$(($(date +%s) - 120))
cpu0=$(cpu)
# LOADGEN_ARGS adds ingest flags, e.g. "--replay /tmp/sdk.otlp" (benches/otel_sdk_traffic.py).
# shellcheck disable=SC2086
"$LG" ingest --endpoint http://127.0.0.1:24317 --spans "$SPANS" --connections "$CONNS" --batch-spans 500 --manifest "$DIR/ids.txt" ${WINDOW:+--seconds "$WINDOW"} ${LOADGEN_ARGS:-} > "$DIR/ingest.json"
cpu1=$(cpu)
stages1=$(curl -s localhost:23200/metrics | awk -F'[="} ]+' '/^vivace_stage_cpu_seconds_total/ {printf "%s %s\n", $2, $3}')
hwm_ingest=$(awk '/VmHWM/{print $2}' /proc/$VP/status)
cat "$DIR/ingest.json"
acked=$(sed 's/.*"spans_acked":\([0-9]*\).*/\1/' "$DIR/ingest.json")
awk -v c0="$cpu0" -v c1="$cpu1" -v a="$acked" -v hi="$hwm_ingest" -v n="$(find "$DIR/blocks" -name data.parquet | wc -l)" 'BEGIN {
  printf "{\"ingest_server_cpu_s\":%.2f,\"ingest_acked_spans_per_cpu_s\":%.0f,\"ingest_peak_rss_mib\":%.0f,\"blocks_cut_in_window\":%d}\n", c1-c0, a/(c1-c0), hi/1024, n }'
# Where the window's CPU went (thread CPU of each stage, vivace_stage_cpu_seconds_total); the
# rest (gRPC/HTTP stack, runtime, allocator purges off those threads) is "other".
echo "$stages1" | awk -v total="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{print b-a}')" '
  NF == 2 { printf "%s\"%s\":%.2f", (n++ ? "," : "{\"stage_cpu_s\":{"), $1, $2; sum += $2 }
  END { printf ",\"other\":%.2f}}\n", total - sum }'
# Traces still in memory at the window's end are not yet paid for: DRAIN=1 also waits until
# every acked span is in a block and counts that CPU too (steady-state cost of a span).
drained() {
  until [ "$(curl -s localhost:23200/metrics | awk '/^vivace_ingester_live_traces /{print $2}')" = "0" ] \
     && [ "$(ls "$DIR"/wal | wc -l)" -le 1 ]; do sleep 1; done
}
if [ -n "${DRAIN:-}" ]; then
  drained
  cpu_d=$(cpu)
  awk -v c0="$cpu0" -v c1="$cpu_d" -v a="$acked" 'BEGIN {
    printf "{\"drained_server_cpu_s\":%.2f,\"acked_spans_per_cpu_s_with_flush\":%.0f}\n", c1-c0, a/(c1-c0) }'
fi
# INGEST_ONLY=1 stops here (the ingest window's figures alone).
if [ -n "${INGEST_ONLY:-}" ]; then exit 0; fi
end=$(($(date +%s) + 120))
"$LG" lookup --api http://127.0.0.1:23200 --manifest "$DIR/ids.txt" --requests 500 --concurrency 8 | sed 's/^/recent /'
# Search right after ingest, as Grafana's default view does: most traces are still in memory
# (the live-trace count says how many), the rest in the blocks cut so far.
echo "{\"fresh_live_traces\":$(curl -s localhost:23200/metrics | awk '/^vivace_ingester_live_traces /{print $2}'),\"fresh_blocks\":$(find "$DIR/blocks" -name data.parquet | wc -l)}"
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --limit 20 --pid "$VP" --start "$start" --end "$end" | sed 's/^/fresh limit20 /'
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --pid "$VP" --start "$start" --end "$end" | sed 's/^/fresh full /'
# FRESH_ONLY=1 stops here (the fresh-data figures alone, for before/after pairs).
if [ -n "${FRESH_ONLY:-}" ]; then exit 0; fi
# Wait until every trace is in a block (the head drains once traces go idle).
drained
sleep 2
hwm=$(awk '/VmHWM/{print $2}' /proc/$VP/status)
blocks=$(find "$DIR/blocks" -name data.parquet | wc -l)
bytes=$(find "$DIR/blocks" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
acked=$(sed 's/.*"spans_acked":\([0-9]*\).*/\1/' "$DIR/ingest.json")
"$LG" lookup --api http://127.0.0.1:23200 --manifest "$DIR/ids.txt" --requests 500 --concurrency 1 | sed 's/^/blocks /'
"$LG" lookup --api http://127.0.0.1:23200 --manifest "$DIR/ids.txt" --requests 500 --concurrency 8 | sed 's/^/blocks /'
cpu2=$(cpu)
"$LG" search --api http://127.0.0.1:23200 --repeat 5 --pid "$VP" --start "$start" --end "$end" --spans "$acked" | tee "$DIR/search.json"
cpu3=$(cpu)
"$LG" search --api http://127.0.0.1:23200 --repeat 3 --limit 20 --pid "$VP" --start "$start" --end "$end" | sed 's/^/blocks limit20 /'
# Every query searches the whole set (pruned spans count, as in Tempo's figure).
awk -v a="$cpu2" -v b="$cpu3" -v n="$acked" 'BEGIN { c = b - a; printf "{\"search_server_cpu_s\":%.2f,\"set_spans_per_cpu_s_all_queries\":%.0f}\n", c, n*6*5/c }'
# Autocomplete: tag names and values, answered from per-block tag summaries.
for p in /api/v2/search/tags /api/v2/search/tag/resource.service.name/values /api/v2/search/tag/span.http.route/values /api/search/tag/http.route/values; do
  curl -s -o /dev/null -w "{\"mode\":\"tags\",\"path\":\"$p\",\"seconds\":%{time_total}}\n" "http://127.0.0.1:23200$p"
done
awk -v c0="$cpu0" -v c1="$cpu1" -v a="$acked" -v b="$bytes" -v n="$blocks" -v h="$hwm" -v hi="$hwm_ingest" 'BEGIN {
  printf "{\"server_cpu_s_ingest\":%.2f,\"acked_spans_per_cpu_s\":%.0f,\"peak_rss_mib_ingest\":%.0f,\"peak_rss_mib_total\":%.0f,\"blocks\":%d,\"bucket_bytes\":%d,\"bytes_per_span\":%.1f}\n",
    c1-c0, a/(c1-c0), hi/1024, h/1024, n, b, b/a }'

# Compaction: stop the server and let a compactor merge the blocks the ingester cut (same
# window, so one output), then measure the bucket again, the compactor's CPU and peak RSS.
kill $VP; wait $VP 2>/dev/null || true
cat > "$DIR/compact.yaml" <<CFG
server: {http_listen_address: 127.0.0.1, http_listen_port: 23201}
compactor: {compaction: {compaction_cycle: 1s, compacted_block_retention: 1s}}
storage:
  trace:
    local: {path: $DIR/blocks}
CFG
in_bytes=$(find "$DIR/blocks" -name data.parquet -printf '%s\n' | awk '{s+=$1} END {print s}')
"$BIN" serve --target=compactor --config.file="$DIR/compact.yaml" 2> "$DIR/compactor.log" &
VP=$!
# Inputs are merged up to four at a time; give up after two minutes (the figure then says how
# many blocks were left).
for _ in $(seq 240); do
  [ "$(find "$DIR/blocks" -name meta.json | wc -l)" = 1 ] \
    && [ "$(find "$DIR/blocks" -name meta.compacted.json | wc -l)" = 0 ] && break
  sleep 0.5
done
left=$(find "$DIR/blocks" -name meta.json | wc -l)
ccpu=$(cpu)
chwm=$(awk '/VmHWM/{print $2}' /proc/$VP/status)
cbytes=$(find "$DIR/blocks" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
awk -v c="$ccpu" -v i="$in_bytes" -v a="$acked" -v b="$cbytes" -v h="$chwm" -v n="$blocks" -v l="$left" 'BEGIN {
  printf "{\"compaction_inputs\":%d,\"blocks_after\":%d,\"compactor_cpu_s\":%.2f,\"compaction_mb_per_cpu_s\":%.1f,\"compaction_spans_per_cpu_s\":%.0f,\"compactor_peak_rss_mib\":%.0f,\"bytes_per_span_compacted\":%.1f}\n",
    n, l, c, i/1e6/c, a/c, h/1024, b/a }'
