//! Synthetic traces for tests, benches and size measurements. Deterministic (seeded) and
//! dependency-free so benches and unit tests share one generator.

use crate::model::{
    any_value, span, status, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
    Resource, ResourceSpans, ScopeSpans, Span, Status, TraceId,
};

use super::TraceInput;

/// xorshift64*: plenty for synthetic data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.next_u64() as usize % xs.len()]
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        out
    }

    pub fn trace_id(&mut self) -> TraceId {
        let mut b = self.bytes::<16>();
        b[0] |= 1; // never all zeros
        TraceId(b)
    }
}

pub fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        key_strindex: 0,
        value: Some(AnyValue { value: Some(v) }),
    }
}

pub fn kv_str(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}

pub fn kv_int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

const SERVICES: [&str; 12] = [
    "frontend",
    "cart",
    "checkout",
    "payment",
    "shipping",
    "email",
    "currency",
    "ad",
    "recommendation",
    "product-catalog",
    "quote",
    "accounting",
];
const ROUTES: [&str; 8] = [
    "/api/cart",
    "/api/checkout",
    "/api/products/{id}",
    "/api/recommendations",
    "/api/ads",
    "/api/currency/convert",
    "/api/shipping/quote",
    "/",
];
const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
const OPS: [&str; 8] = [
    "GetCart",
    "AddItem",
    "PlaceOrder",
    "Charge",
    "GetQuote",
    "SendOrderConfirmation",
    "Convert",
    "ListRecommendations",
];

/// A realistic trace set: ~12 services, 5–60 spans per trace, semantic-convention
/// attributes, ~2% error spans, a few events and links.
pub fn realistic_traces(n: usize, seed: u64) -> Vec<TraceInput> {
    let mut rng = Rng::new(seed);
    let base: u64 = 1_700_000_000_000_000_000;
    (0..n)
        .map(|i| realistic_trace(&mut rng, base + i as u64 * 7_000_000))
        .collect()
}

fn resource_for(service: &str, rng: &mut Rng) -> Resource {
    let pod = format!(
        "{service}-7d9f8b{:x}-{:05x}",
        rng.range(0, 3),
        rng.range(0, 4) * 7919
    );
    Resource {
        attributes: vec![
            kv_str("service.name", service),
            kv_str("service.version", "1.4.2"),
            kv_str("service.namespace", "shop"),
            kv_str(
                "telemetry.sdk.language",
                if service.len().is_multiple_of(2) {
                    "go"
                } else {
                    "java"
                },
            ),
            kv_str("telemetry.sdk.name", "opentelemetry"),
            kv_str("telemetry.sdk.version", "1.28.0"),
            kv_str("host.name", &pod),
            kv_str("k8s.cluster.name", "prod-eu-west-1"),
            kv_str("k8s.namespace.name", "shop"),
            kv_str("k8s.pod.name", &pod),
            kv_str("k8s.container.name", service),
            kv_int("process.pid", 1 + (service.len() as i64) * 37),
        ],
        dropped_attributes_count: 0,
        entity_refs: vec![],
    }
}

fn realistic_trace(rng: &mut Rng, t0: u64) -> TraceInput {
    let id = rng.trace_id();
    let n = rng.range(5, 60) as usize;
    let mut services = Vec::with_capacity(n);
    let mut spans: Vec<Span> = Vec::with_capacity(n);
    let start = t0 + rng.range(0, 1_000_000);
    for i in 0..n {
        let parent = if i == 0 {
            None
        } else {
            Some(rng.range(0, i as u64 - 1) as usize)
        };
        let service = match parent {
            Some(p) if rng.chance(0.5) => services[p],
            _ => *rng.pick(&SERVICES),
        };
        services.push(service);
        let (pstart, pdur) = parent
            .map(|p| {
                (
                    spans[p].start_time_unix_nano,
                    spans[p].end_time_unix_nano - spans[p].start_time_unix_nano,
                )
            })
            .unwrap_or((start, 200_000_000));
        let s = pstart + rng.range(0, pdur / 2);
        let dur = rng.range(20_000, (pdur / 2).max(30_000));
        let kind = if i == 0 {
            2
        } else {
            *rng.pick(&[1i32, 2, 3, 3])
        };
        let mut attributes = Vec::new();
        let name;
        if kind == 2 {
            let route = *rng.pick(&ROUTES);
            let method = *rng.pick(&METHODS);
            name = format!("{method} {route}");
            attributes.push(kv_str("http.request.method", method));
            attributes.push(kv_str(
                "url.path",
                &route.replace("{id}", &rng.range(1, 500).to_string()),
            ));
            attributes.push(kv_str("http.route", route));
            attributes.push(kv_int("http.response.status_code", 200));
            attributes.push(kv_str("server.address", "shop.example.com"));
            attributes.push(kv_str("network.protocol.version", "1.1"));
            attributes.push(kv_str(
                "user_agent.original",
                "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
            ));
        } else if kind == 3 {
            let op = *rng.pick(&OPS);
            name = format!("oteldemo.Service/{op}");
            attributes.push(kv_str("rpc.system", "grpc"));
            attributes.push(kv_str("rpc.service", "oteldemo.Service"));
            attributes.push(kv_str("rpc.method", op));
            attributes.push(kv_int("rpc.grpc.status_code", 0));
            let server = SERVICES[rng.range(0, SERVICES.len() as u64 - 1) as usize];
            attributes.push(kv_str("server.address", server));
            attributes.push(kv_int("server.port", 8080));
        } else {
            name = rng
                .pick(&["SELECT products", "cache.get", "render", "validate"])
                .to_string();
            if name.starts_with("SELECT") {
                attributes.push(kv_str("db.system", "postgresql"));
                attributes.push(kv_str(
                    "db.statement",
                    "SELECT id, name, price FROM products WHERE id = $1",
                ));
            } else {
                attributes.push(kv_str("code.function", &name));
                attributes.push(kv_int("app.items", rng.range(0, 20) as i64));
            }
        }
        let mut events = Vec::new();
        let error = rng.chance(0.02);
        let status = if error {
            events.push(span::Event {
                time_unix_nano: s + dur / 2,
                name: "exception".into(),
                attributes: vec![
                    kv_str("exception.type", "java.lang.IllegalStateException"),
                    kv_str("exception.message", "payment declined"),
                    kv_str("exception.stacktrace", "java.lang.IllegalStateException: payment declined\n\tat shop.Payment.charge(Payment.java:42)\n\tat shop.Checkout.place(Checkout.java:88)"),
                ],
                dropped_attributes_count: 0,
            });
            Some(Status {
                message: "payment declined".into(),
                code: status::StatusCode::Error as i32,
            })
        } else if kind == 2 || rng.chance(0.5) {
            Some(Status {
                message: String::new(),
                code: 0,
            })
        } else {
            None
        };
        if rng.chance(0.1) {
            events.push(span::Event {
                time_unix_nano: s + rng.range(0, dur),
                name: "message".into(),
                attributes: vec![
                    kv_str("message.type", "SENT"),
                    kv_int("message.id", rng.range(1, 9) as i64),
                ],
                dropped_attributes_count: 0,
            });
        }
        let mut links = Vec::new();
        if rng.chance(0.03) {
            links.push(span::Link {
                trace_id: rng.trace_id().0.to_vec(),
                span_id: rng.bytes::<8>().to_vec(),
                trace_state: String::new(),
                attributes: vec![kv_str("link.reason", "batch")],
                dropped_attributes_count: 0,
                flags: 0x100,
            });
        }
        spans.push(Span {
            trace_id: id.0.to_vec(),
            span_id: rng.bytes::<8>().to_vec(),
            trace_state: String::new(),
            parent_span_id: parent.map(|p| spans[p].span_id.clone()).unwrap_or_default(),
            flags: 0x101,
            name,
            kind,
            start_time_unix_nano: s,
            end_time_unix_nano: s + dur,
            attributes,
            dropped_attributes_count: 0,
            events,
            dropped_events_count: 0,
            links,
            dropped_links_count: 0,
            status,
        });
    }
    // One ResourceSpans per service, in first-seen order.
    let mut batches: Vec<ResourceSpans> = Vec::new();
    let mut order: Vec<&str> = Vec::new();
    for (span, service) in spans.into_iter().zip(services) {
        let pos = match order.iter().position(|s| *s == service) {
            Some(p) => p,
            None => {
                order.push(service);
                batches.push(ResourceSpans {
                    resource: Some(resource_for(service, rng)),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: format!("io.opentelemetry.{service}"),
                            version: "2.1.0".into(),
                            attributes: vec![],
                            dropped_attributes_count: 0,
                        }),
                        spans: vec![],
                        schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
                    }],
                    schema_url: "https://opentelemetry.io/schemas/1.24.0".into(),
                });
                batches.len() - 1
            }
        };
        batches[pos].scope_spans[0].spans.push(span);
    }
    TraceInput { id, batches }
}

/// Every attribute value kind, including ones dedicated columns must leave alone.
fn odd_attrs(rng: &mut Rng, with_dedicated: bool) -> Vec<KeyValue> {
    use any_value::Value;
    let mut out = vec![
        kv_str("s", "x"),
        kv("b", Value::BoolValue(rng.chance(0.5))),
        kv_int("i", rng.next_u64() as i64),
        kv(
            "d",
            Value::DoubleValue(f64::from_bits(rng.range(0, 1 << 62))),
        ),
        kv("bytes", Value::BytesValue(rng.bytes::<5>().to_vec())),
        kv(
            "arr",
            Value::ArrayValue(ArrayValue {
                values: vec![
                    AnyValue {
                        value: Some(Value::StringValue("a".into())),
                    },
                    AnyValue {
                        value: Some(Value::IntValue(3)),
                    },
                    AnyValue { value: None },
                ],
            }),
        ),
        kv(
            "kvl",
            Value::KvlistValue(KeyValueList {
                values: vec![
                    kv_str("k", "v"),
                    KeyValue {
                        key: "n".into(),
                        key_strindex: 0,
                        value: None,
                    },
                ],
            }),
        ),
        KeyValue {
            key: "none".into(),
            key_strindex: 0,
            value: None,
        },
        KeyValue {
            key: "empty".into(),
            key_strindex: 0,
            value: Some(AnyValue { value: None }),
        },
        kv_str("", ""),
    ];
    if with_dedicated {
        out.push(kv_str("http.url", "https://x/y"));
    }
    out
}

/// Traces exercising every field and edge case the format must round-trip.
pub fn all_kinds_traces(n: usize, seed: u64) -> Vec<TraceInput> {
    use any_value::Value;
    let mut rng = Rng::new(seed);
    let mut out = realistic_traces(n, seed ^ 0xabcdef);
    for (ti, t) in out.iter_mut().enumerate() {
        let b = &mut t.batches;
        // Dedicated keys with the wrong type stay generic; duplicates stay generic too.
        if let Some(r) = b[0].resource.as_mut() {
            r.attributes.insert(0, kv_int("k8s.pod.name", 7));
            r.attributes.push(kv_str("service.name", "duplicate"));
            r.attributes.extend(odd_attrs(&mut rng, false));
            r.dropped_attributes_count = 3;
            if ti % 3 == 0 {
                r.entity_refs
                    .push(opentelemetry_proto::tonic::common::v1::EntityRef {
                        schema_url: "u".into(),
                        r#type: "k8s.pod".into(),
                        id_keys: vec!["k8s.pod.uid".into()],
                        description_keys: vec![],
                    });
            }
        }
        if ti % 4 == 1 {
            b[0].resource = None;
        }
        let ss = &mut b[0].scope_spans[0];
        if ti % 5 == 2 {
            ss.scope = None;
        } else if let Some(s) = ss.scope.as_mut() {
            s.attributes = odd_attrs(&mut rng, true);
            s.dropped_attributes_count = 1;
        }
        let sp = &mut ss.spans[0];
        sp.attributes.extend(odd_attrs(&mut rng, true));
        sp.attributes
            .push(kv("http.status_code", Value::StringValue("200".into())));
        sp.attributes.push(kv_int("http.status_code", 500));
        sp.attributes.push(kv_str("http.method", "GET"));
        sp.trace_state = "k=v".into();
        sp.flags = 0x301;
        sp.dropped_attributes_count = 2;
        sp.dropped_events_count = 4;
        sp.dropped_links_count = 5;
        sp.status = Some(Status {
            message: "boom".into(),
            code: 2,
        });
        sp.events.push(span::Event {
            // Before the span start: the stored offset goes negative.
            time_unix_nano: sp.start_time_unix_nano - 5,
            name: "early".into(),
            attributes: odd_attrs(&mut rng, true),
            dropped_attributes_count: 6,
        });
        sp.events.push(span::Event {
            time_unix_nano: 0,
            name: String::new(),
            attributes: vec![],
            dropped_attributes_count: 0,
        });
        sp.links.push(span::Link {
            trace_id: rng.bytes::<16>().to_vec(),
            span_id: rng.bytes::<8>().to_vec(),
            trace_state: "a=b".into(),
            attributes: odd_attrs(&mut rng, false),
            dropped_attributes_count: 7,
            flags: 1,
        });
        if let Some(last) = ss.spans.last_mut() {
            // A span whose trace ID differs from the row's and whose end precedes its start.
            last.trace_id = vec![1, 2, 3];
            last.end_time_unix_nano = last.start_time_unix_nano.wrapping_sub(10);
        }
        b.push(ResourceSpans::default());
        b.push(ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans::default()],
            schema_url: String::new(),
        });
    }
    out
}
