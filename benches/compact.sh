#!/usr/bin/env bash
# Bytes per span in the bucket at the cut and after compaction: ingest, wait until every trace is in
# a block, restart with a 3 s compaction cycle and wait until the block set is stable. Then
# lookups and searches (limit 20 and unlimited) over the compacted blocks.
#   benches/compact.sh [spans]   (LOADGEN_ARGS="--replay /tmp/sdk.otlp" for the SDK recording)
set -euo pipefail
cd "$(dirname "$0")/.."
SPANS=${1:-3000000}
if [ -z "${VIVACE_BIN:-}" ]; then cargo build --release --bin vivace --bench loadgen >&2; fi
BIN=${VIVACE_BIN:-target/release/vivace}
LG=${LOADGEN_BIN:-$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)}
DIR=$(mktemp -d)
trap 'kill $VP 2>/dev/null || true; rm -rf "$DIR"' EXIT
cat > "$DIR/cfg.yaml" <<CFG
server: {http_listen_address: 127.0.0.1, http_listen_port: 23300, log_level: ${LOGLEVEL:-info}}
distributor:
  receivers:
    otlp:
      protocols:
        grpc: {endpoint: "127.0.0.1:24417"}
        http: {endpoint: "127.0.0.1:24418"}
ingester: {trace_idle_period: 2s, max_block_duration: 15s, flush_check_period: 1s}
compactor: {compaction: {compaction_cycle: ${CYCLE:-24h}, compacted_block_retention: 1s, scratch_dir: $DIR/scratch}}
overrides: {defaults: {ingestion: {rate_limit_bytes: 0}}}
storage:
  trace:
    wal: {path: $DIR/wal}
    local: {path: $DIR/blocks}
CFG
sizes() {
  python3 - "$DIR/blocks" <<'PY'
import json, os, sys
root = sys.argv[1]; total = 0; spans = 0; blocks = 0; levels = {}
for t in os.listdir(root):
    td = os.path.join(root, t)
    if not os.path.isdir(td) or t.startswith('~'): continue
    for b in os.listdir(td):
        bd = os.path.join(td, b); m = os.path.join(bd, 'meta.json')
        if not os.path.exists(m): continue
        meta = json.load(open(m)); blocks += 1
        spans += meta.get('totalSpans', 0)
        lv = meta.get('compactionLevel', 0); levels[lv] = levels.get(lv, 0) + 1
        for f in os.listdir(bd): total += os.path.getsize(os.path.join(bd, f))
print(json.dumps({"blocks": blocks, "levels": levels, "spans": spans, "bytes": total, "bytes_per_span": round(total / max(spans, 1), 2)}))
PY
}
"$BIN" serve --config.file="$DIR/cfg.yaml" 2> "$DIR/vivace.log" &
VP=$!
until curl -sf localhost:23300/ready >/dev/null; do sleep 0.2; done
start=$(($(date +%s) - 120))
# ROUNDS=N sends the spans in N loadgen runs of different seeds: the generator holds its
# requests in memory (about 1.9 GB per million synthetic spans).
ROUNDS=${ROUNDS:-1}
for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2086
  "$LG" ingest --endpoint http://127.0.0.1:24417 --spans $((SPANS / ROUNDS)) --seed $((r * 1000000)) --connections 16 --batch-spans 500 --manifest "$DIR/ids-$r.txt" ${LOADGEN_ARGS:-} | tail -1
done
cat "$DIR"/ids-*.txt > "$DIR/ids.txt"
# every acked trace in a block
until [ "$(curl -s localhost:23300/metrics | awk '/^vivace_ingester_live_bytes /{l=$2} /^vivace_ingester_flushing_bytes /{f=$2} END{print l+f}')" = "0" ]; do sleep 1; done
sleep 2
echo "at the cut: $(sizes)"
# restart with compaction on, same data
kill $VP; wait $VP 2>/dev/null || true
sed -i 's/compaction_cycle: 24h/compaction_cycle: 3s/' "$DIR/cfg.yaml"
"$BIN" serve --config.file="$DIR/cfg.yaml" 2>> "$DIR/vivace.log" &
VP=$!
until curl -sf localhost:23300/ready >/dev/null; do sleep 0.2; done
prev=""; stable=0
while [ $stable -lt ${STABLE:-12} ]; do
  sleep 5; now=$(sizes)
  # A compaction in progress writes its output under scratch_dir: not stable yet.
  if [ "$now" = "$prev" ] && [ -z "$(ls -A "$DIR/scratch" 2>/dev/null)" ]; then stable=$((stable+1)); else stable=0; fi
  prev=$now
done
echo "after compaction: $prev"
end=$(($(date +%s) + 120))
"$LG" lookup --api http://127.0.0.1:23300 --manifest "$DIR/ids.txt" --requests 300 --concurrency 1 | sed 's/^/compacted /'
"$LG" search --api http://127.0.0.1:23300 --repeat 3 --limit 20 --pid "$VP" --start "$start" --end "$end" | sed 's/^/compacted limit20 /'
"$LG" search --api http://127.0.0.1:23300 --repeat 3 --pid "$VP" --start "$start" --end "$end" | sed 's/^/compacted full /'
