#!/usr/bin/env python3
"""Records OTLP export requests made by the OpenTelemetry Python SDK, for the loadgen's
`--replay` (a data profile vivace's own generator did not make).

Traffic shape: small traces (3-10 spans) of a web front end, an API and a database, few
attributes per span (the SDK's resource, HTTP and DB semantic conventions), ~3% errors.
The SDK's own OTLP encoder makes the bytes; the file holds 4-byte big-endian lengths, each
followed by one ExportTraceServiceRequest.

    pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-common
    python3 benches/otel_sdk_traffic.py --spans 200000 --out /tmp/sdk.otlp
"""

import argparse
import random
import struct

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

ROUTES = ["/", "/cart", "/checkout", "/product/{id}", "/search", "/login"]
TABLES = ["orders", "users", "products", "sessions"]


def providers(exporter):
    out = {}
    for svc, ver in [("web", "1.4.2"), ("api", "2.0.1"), ("postgres-proxy", "0.9.0")]:
        p = TracerProvider(resource=Resource.create({"service.name": svc, "service.version": ver,
                                                     "deployment.environment": "bench"}))
        p.add_span_processor(SimpleSpanProcessor(exporter))
        out[svc] = p.get_tracer("bench." + svc, "1.0")
    return out


def trace(t, rng):
    web, api, db = t["web"], t["api"], t["postgres-proxy"]
    route = rng.choice(ROUTES)
    error = rng.random() < 0.03
    with web.start_as_current_span("GET " + route, kind=SpanKind.SERVER,
                                   attributes={"http.request.method": "GET", "http.route": route}) as root:
        for _ in range(rng.randint(1, 3)):
            with api.start_as_current_span("POST /v2/items", kind=SpanKind.SERVER,
                                           attributes={"http.request.method": "POST",
                                                       "http.route": "/v2/items"}) as s:
                for _ in range(rng.randint(0, 2)):
                    table = rng.choice(TABLES)
                    with db.start_as_current_span("SELECT " + table, kind=SpanKind.CLIENT,
                                                  attributes={"db.system": "postgresql",
                                                              "db.collection.name": table}):
                        pass
                if error:
                    s.set_status(Status(StatusCode.ERROR, "upstream failed"))
        root.set_attribute("http.response.status_code", 500 if error else 200)
        if error:
            root.set_status(Status(StatusCode.ERROR))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spans", type=int, default=200000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    exporter = InMemorySpanExporter()
    tracers = providers(exporter)
    written = 0
    with open(a.out, "wb") as f:
        while written < a.spans:
            while len(exporter.get_finished_spans()) < a.batch:
                trace(tracers, rng)
            spans = exporter.get_finished_spans()
            exporter.clear()
            data = encode_spans(spans).SerializeToString()
            f.write(struct.pack(">I", len(data)))
            f.write(data)
            written += len(spans)
    print(f"{written} spans in {a.out}")


if __name__ == "__main__":
    main()
